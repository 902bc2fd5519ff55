-- Verification: compare the source with the ledger, and the ledger with the
-- target (syncflow verify; a schedule in verify mode).
--
-- The ledger learns what the target row held after SyncFlow wrote it:
-- target_hash is a 64-bit hash of the row's text as PostgreSQL stores it
-- (trailing nulls cut, so a column added later does not change it), and
-- target_key the row of its key columns as text, set by the same statement that
-- writes the target row. A verification recomputes the hash
-- over the target and compares. Rows written before this migration have none
-- until their next write (verify counts them as unhashed).
ALTER TABLE bridge.synced_records
    ADD COLUMN target_hash bytea,
    ADD COLUMN target_key  text;
-- The hash is written by a second update of the ledger row in the batch's
-- transaction; room on each page lets it be a heap-only (HOT) update, which
-- touches no index.
ALTER TABLE bridge.synced_records SET (fillfactor = 85);

-- A schedule publishes every row of its entity (publish, as before), or compares
-- the entity with the source and publishes only the rows that drifted (verify).
ALTER TABLE bridge.background_sync_schedule
    ADD COLUMN mode text NOT NULL DEFAULT 'publish',
    ADD CONSTRAINT ck_background_sync_schedule_mode CHECK (mode IN ('publish', 'verify'));

-- One row per verification of one entity: when, how long, what was compared and
-- how many rows differed, by kind, with a few sample keys of each kind.
CREATE TABLE bridge.verifications (
    uid              uuid        PRIMARY KEY,
    entity_name      text        NOT NULL,
    -- cli (syncflow verify) or schedule (a verify night)
    trigger          text        NOT NULL,
    repair           boolean     NOT NULL DEFAULT false,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    duration_ms      bigint,
    source_rows      bigint      NOT NULL DEFAULT 0,
    ledger_rows      bigint      NOT NULL DEFAULT 0,
    missing          bigint      NOT NULL DEFAULT 0,
    stale            bigint      NOT NULL DEFAULT 0,
    extra            bigint      NOT NULL DEFAULT 0,
    target_edited    bigint      NOT NULL DEFAULT 0,
    target_missing   bigint      NOT NULL DEFAULT 0,
    unhashed         bigint      NOT NULL DEFAULT 0,
    -- source rows without a usable key or rowversion
    unreadable       bigint      NOT NULL DEFAULT 0,
    -- rows published to repair (0 without --repair)
    published        bigint      NOT NULL DEFAULT 0,
    -- {"missing": [{"PART_NO": "P1"}, ...], ...}
    samples          jsonb       NOT NULL DEFAULT '{}',
    error            text,
    replica          text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ck_verifications_trigger CHECK (trigger IN ('cli', 'schedule')),
    CONSTRAINT ck_verifications_counts CHECK (
        source_rows >= 0 AND ledger_rows >= 0 AND missing >= 0 AND stale >= 0 AND extra >= 0 AND
        target_edited >= 0 AND target_missing >= 0 AND unhashed >= 0 AND unreadable >= 0 AND published >= 0)
);
CREATE INDEX ix_verifications_entity_started ON bridge.verifications (entity_name, started_at DESC);
