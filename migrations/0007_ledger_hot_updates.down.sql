-- One statement: CONCURRENTLY cannot run in a transaction (see the up file).
CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_synced_records_batch ON bridge.synced_records (batch_uid);
