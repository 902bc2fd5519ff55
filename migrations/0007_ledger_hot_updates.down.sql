CREATE INDEX IF NOT EXISTS ix_synced_records_batch ON bridge.synced_records (batch_uid);
