DROP INDEX bridge.ix_pending_children_entity;
DROP INDEX bridge.ix_failed_records_unresolved;
DELETE FROM bridge.pending_children WHERE child_payload IS NULL;
ALTER TABLE bridge.pending_children
    DROP COLUMN child_raw,
    DROP COLUMN published_at,
    ALTER COLUMN child_payload SET NOT NULL;

DROP INDEX bridge.ix_failed_records_orphan_parent;
ALTER TABLE bridge.failed_records
    DROP COLUMN parent_entity,
    DROP COLUMN parent_bk_hash,
    DROP COLUMN published_at;
DROP INDEX bridge.ux_failed_records_message;
CREATE UNIQUE INDEX ux_failed_records_max_deliver ON bridge.failed_records (stream, stream_seq)
    WHERE stage_failed = 'max_deliver' AND resolved_at IS NULL;
