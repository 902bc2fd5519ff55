-- Back to one table each for sync_batches and failed_records (every row kept).
ALTER TABLE bridge.failed_records DROP CONSTRAINT failed_records_batch_uid_fkey;
ALTER TABLE bridge.pending_children DROP CONSTRAINT pending_children_batch_uid_fkey;
ALTER TABLE bridge.erp_sync_state DROP CONSTRAINT erp_sync_state_last_batch_uid_fkey;

ALTER TABLE bridge.sync_batches RENAME TO sync_batches_partitioned;
CREATE TABLE bridge.sync_batches (LIKE bridge.sync_batches_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
INSERT INTO bridge.sync_batches SELECT * FROM bridge.sync_batches_partitioned;
DROP TABLE bridge.sync_batches_partitioned;
ALTER TABLE bridge.sync_batches ADD CONSTRAINT sync_batches_pkey PRIMARY KEY (uid);
CREATE INDEX ix_sync_batches_entity ON bridge.sync_batches (entity_name, started_at);
CREATE INDEX ix_sync_batches_status ON bridge.sync_batches (status);
CREATE TRIGGER tg_sync_batches_updated_at BEFORE UPDATE ON bridge.sync_batches
    FOR EACH ROW EXECUTE FUNCTION bridge.touch_updated_at();

DROP TABLE bridge.failed_record_messages;
ALTER TABLE bridge.failed_records RENAME TO failed_records_partitioned;
CREATE TABLE bridge.failed_records (LIKE bridge.failed_records_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
INSERT INTO bridge.failed_records SELECT * FROM bridge.failed_records_partitioned;
DROP TABLE bridge.failed_records_partitioned;
DROP FUNCTION bridge.failed_record_message_claim();
ALTER TABLE bridge.failed_records ADD CONSTRAINT failed_records_pkey PRIMARY KEY (uid);
CREATE INDEX ix_failed_records_batch ON bridge.failed_records (batch_uid);
CREATE INDEX ix_failed_records_retry ON bridge.failed_records (next_retry_at) WHERE resolved_at IS NULL;
CREATE INDEX ix_failed_records_entity ON bridge.failed_records (entity_name, stage_failed, created_at);
CREATE INDEX ix_failed_records_unresolved ON bridge.failed_records (entity_name, stage_failed, created_at)
    WHERE resolved_at IS NULL;
CREATE INDEX ix_failed_records_orphan_parent ON bridge.failed_records (parent_entity, parent_bk_hash)
    WHERE stage_failed = 'orphan' AND resolved_at IS NULL;
CREATE UNIQUE INDEX ux_failed_records_message ON bridge.failed_records (stream, stream_seq)
    WHERE resolved_at IS NULL;
CREATE TRIGGER tg_failed_records_updated_at BEFORE UPDATE ON bridge.failed_records
    FOR EACH ROW EXECUTE FUNCTION bridge.touch_updated_at();

ALTER TABLE bridge.failed_records ADD CONSTRAINT failed_records_batch_uid_fkey
    FOREIGN KEY (batch_uid) REFERENCES bridge.sync_batches (uid) ON DELETE CASCADE;
ALTER TABLE bridge.pending_children ADD CONSTRAINT pending_children_batch_uid_fkey
    FOREIGN KEY (batch_uid) REFERENCES bridge.sync_batches (uid) ON DELETE CASCADE;
ALTER TABLE bridge.erp_sync_state ADD CONSTRAINT erp_sync_state_last_batch_uid_fkey
    FOREIGN KEY (last_batch_uid) REFERENCES bridge.sync_batches (uid) ON DELETE SET NULL;
-- The ledger's reference comes back; rows naming a batch pruned meanwhile lose it.
UPDATE bridge.synced_records r SET batch_uid = NULL
WHERE batch_uid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM bridge.sync_batches b WHERE b.uid = r.batch_uid);
ALTER TABLE bridge.synced_records ADD CONSTRAINT synced_records_batch_uid_fkey
    FOREIGN KEY (batch_uid) REFERENCES bridge.sync_batches (uid) ON DELETE SET NULL;

DROP FUNCTION bridge.prune_tombstones(timestamptz, text, text, integer);
DROP FUNCTION bridge.drop_month_partition(text, text);
DROP FUNCTION bridge.take_month_partition(text, text);
DROP FUNCTION bridge.month_partition(text, text);
DROP FUNCTION bridge.ensure_month_partitions(text, timestamptz, integer);
DROP FUNCTION bridge.uuid_time(uuid);
DROP FUNCTION bridge.uuid_floor(timestamptz);
