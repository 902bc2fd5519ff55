-- One unresolved dead letter per message, orphans that remember their parent, and
-- parked children that keep their original bytes.

-- A message that fails again while it has an unresolved dead letter updates that
-- dead letter (the earlier attempt goes into its history) instead of adding a
-- second one. Earlier duplicates are resolved in favour of the newest.
UPDATE bridge.failed_records SET stream_seq = NULL WHERE stream_seq = 0;
UPDATE bridge.failed_records f
SET resolved_at = now(), next_retry_at = NULL,
    resolution_note = 'superseded by a later dead letter of the same message (one dead letter per message)'
WHERE f.resolved_at IS NULL AND f.stream_seq IS NOT NULL
  AND EXISTS (SELECT 1 FROM bridge.failed_records g
              WHERE g.stream = f.stream AND g.stream_seq = f.stream_seq AND g.resolved_at IS NULL AND g.uid > f.uid);
DROP INDEX bridge.ux_failed_records_max_deliver;
CREATE UNIQUE INDEX ux_failed_records_message ON bridge.failed_records (stream, stream_seq)
    WHERE resolved_at IS NULL;

-- An orphan (a child that waited too long for its parent) keeps the parent's key
-- hash, so that the parent's arrival releases it.
ALTER TABLE bridge.failed_records
    ADD COLUMN parent_entity text,
    ADD COLUMN parent_bk_hash text,
    ADD COLUMN published_at timestamptz;
CREATE INDEX ix_failed_records_orphan_parent ON bridge.failed_records (parent_entity, parent_bk_hash)
    WHERE stage_failed = 'orphan' AND resolved_at IS NULL;

-- child_raw is the child's event exactly as received (child_payload is the same as
-- JSONB, for reading; it is NULL when the event has no JSONB form, e.g. a NUL
-- character). published_at is when JetStream stored the event.
ALTER TABLE bridge.pending_children
    ADD COLUMN child_raw bytea,
    ADD COLUMN published_at timestamptz,
    ALTER COLUMN child_payload DROP NOT NULL;
UPDATE bridge.pending_children SET child_raw = convert_to(child_payload::text, 'UTF8');
ALTER TABLE bridge.pending_children ALTER COLUMN child_raw SET NOT NULL;

-- The gauges read, every few seconds on every replica, the unresolved dead letters
-- by entity and stage and the parked children by entity, with the oldest of each:
-- both come from an index alone, whatever the size of the resolved history.
CREATE INDEX ix_failed_records_unresolved ON bridge.failed_records (entity_name, stage_failed, created_at)
    WHERE resolved_at IS NULL;
CREATE INDEX ix_pending_children_entity ON bridge.pending_children (child_entity, created_at);
