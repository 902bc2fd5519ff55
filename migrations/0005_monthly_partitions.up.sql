-- sync_batches and failed_records, the two tables that grow with traffic, become
-- range-partitioned by month, so that retention drops a month as a whole (a
-- metadata operation) instead of deleting its rows one by one.
--
-- The partition key is uid. Every uid is a UUIDv7 that SyncFlow generates when it
-- writes the row, and a UUIDv7 begins with its creation time in milliseconds: a
-- month of rows is the range of uids from the first UUID of that month to the
-- first of the next. PostgreSQL requires the partition key in every unique key:
-- partitioning by uid keeps the primary keys (uid) and every foreign key that
-- points at a batch exactly as they were, where partitioning by created_at would
-- have widened both primary keys and every reference to them. Months are in UTC.
--
-- A DEFAULT partition takes any row no month partition covers (a uid that is not
-- a UUIDv7, or a month nobody created ahead), so that a write never fails for want
-- of a partition. The service creates the current month and the next two, at
-- start and every hour, and so do this migration and `syncflow prune`.

-- uuid_floor is the smallest UUIDv7 of the millisecond t; uuid_time is the time
-- a UUIDv7 begins with.
CREATE FUNCTION bridge.uuid_floor(t timestamptz) RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM t) * 1000)::bigint), 12, '0') || '00000000000000000000')::uuid
$$;
CREATE FUNCTION bridge.uuid_time(u uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_timestamp(('x' || lpad(left(replace(u::text, '-', ''), 12), 16, '0'))::bit(64)::bigint / 1000.0)
$$;

-- ensure_month_partitions creates the partitions of parent (sync_batches or
-- failed_records) for `months` months from the month of first, those missing,
-- named <parent>_YYYY_MM, and returns how many it created. Concurrent callers
-- take turns (an advisory lock); creating a partition waits at most five seconds
-- for its lock on the parent (a later call tries again). A month whose rows are
-- already in the DEFAULT partition is left there (moving rows that dead letters
-- reference is not a job for a background call): `syncflow prune` reports it.
CREATE FUNCTION bridge.ensure_month_partitions(parent text, first timestamptz, months integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    m timestamp := date_trunc('month', first AT TIME ZONE 'UTC');
    created integer := 0;
    name text;
    lo uuid;
    hi uuid;
    stranded boolean;
BEGIN
    IF parent NOT IN ('sync_batches', 'failed_records') THEN
        RAISE EXCEPTION 'bridge.ensure_month_partitions: % is not partitioned by month', parent;
    END IF;
    -- Bounded, so that no caller can fill the catalog with partitions.
    IF months NOT BETWEEN 1 AND 240 OR first < now() - interval '20 years' OR first > now() + interval '1 year' THEN
        RAISE EXCEPTION 'bridge.ensure_month_partitions: % months from % is out of bounds (1 to 240 months, from at most 20 years back to 1 year ahead)', months, first;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('bridge.ensure_month_partitions'));
    PERFORM set_config('lock_timeout', '5s', true);
    FOR i IN 1 .. months LOOP
        name := parent || '_' || to_char(m, 'YYYY_MM');
        lo := bridge.uuid_floor(m AT TIME ZONE 'UTC');
        hi := bridge.uuid_floor((m + interval '1 month') AT TIME ZONE 'UTC');
        IF to_regclass(format('bridge.%I', name)) IS NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM bridge.%I WHERE uid >= $1 AND uid < $2)', parent || '_default')
                INTO stranded USING lo, hi;
            IF NOT stranded THEN
                EXECUTE format('CREATE TABLE bridge.%I PARTITION OF bridge.%I FOR VALUES FROM (%L) TO (%L)', name, parent, lo, hi);
                created := created + 1;
            END IF;
        END IF;
        m := m + interval '1 month';
    END LOOP;
    RETURN created;
END
$$;

-- The references to batches are dropped while the table is rebuilt and made
-- again below, except the ledger's: synced_records.batch_uid keeps the batch
-- that last wrote a key, and a ledger row outlives its batch (a key written once
-- two years ago still points at a batch of that month). A foreign key there would
-- keep every month of batches for ever, or turn each pruned month into an update
-- of millions of ledger rows; without it the column is a hint that may name a
-- pruned batch.
ALTER TABLE bridge.failed_records DROP CONSTRAINT failed_records_batch_uid_fkey;
ALTER TABLE bridge.pending_children DROP CONSTRAINT pending_children_batch_uid_fkey;
ALTER TABLE bridge.erp_sync_state DROP CONSTRAINT erp_sync_state_last_batch_uid_fkey;
ALTER TABLE bridge.synced_records DROP CONSTRAINT synced_records_batch_uid_fkey;

ALTER TABLE bridge.sync_batches RENAME TO sync_batches_unpartitioned;
CREATE TABLE bridge.sync_batches (LIKE bridge.sync_batches_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (uid);
CREATE TABLE bridge.sync_batches_default PARTITION OF bridge.sync_batches DEFAULT;
ALTER TABLE bridge.failed_records RENAME TO failed_records_unpartitioned;
CREATE TABLE bridge.failed_records (LIKE bridge.failed_records_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (uid);
CREATE TABLE bridge.failed_records_default PARTITION OF bridge.failed_records DEFAULT;

-- The months the existing rows need: from the oldest UUIDv7 (no further back
-- than ten years) to two months ahead.
DO $$
DECLARE
    t text;
    oldest timestamptz;
BEGIN
    FOREACH t IN ARRAY ARRAY['sync_batches', 'failed_records'] LOOP
        EXECUTE format('SELECT min(bridge.uuid_time(uid)) FROM bridge.%I WHERE substr(uid::text, 15, 1) = ''7''', t || '_unpartitioned')
            INTO oldest;
        oldest := least(greatest(coalesce(oldest, now()), now() - interval '10 years'), now());
        PERFORM bridge.ensure_month_partitions(t, oldest,
            (extract(year FROM age(date_trunc('month', now()), date_trunc('month', oldest))) * 12 +
             extract(month FROM age(date_trunc('month', now()), date_trunc('month', oldest))))::integer + 3);
    END LOOP;
END
$$;

INSERT INTO bridge.sync_batches SELECT * FROM bridge.sync_batches_unpartitioned;
DROP TABLE bridge.sync_batches_unpartitioned;
INSERT INTO bridge.failed_records SELECT * FROM bridge.failed_records_unpartitioned;
DROP TABLE bridge.failed_records_unpartitioned;

ALTER TABLE bridge.sync_batches ADD CONSTRAINT sync_batches_pkey PRIMARY KEY (uid);
CREATE INDEX ix_sync_batches_entity ON bridge.sync_batches (entity_name, started_at);
CREATE INDEX ix_sync_batches_status ON bridge.sync_batches (status);
-- Retention counts from the end of a batch: prune finds the old ones by this.
CREATE INDEX ix_sync_batches_finished ON bridge.sync_batches (finished_at);
CREATE TRIGGER tg_sync_batches_updated_at BEFORE UPDATE ON bridge.sync_batches
    FOR EACH ROW EXECUTE FUNCTION bridge.touch_updated_at();

ALTER TABLE bridge.failed_records ADD CONSTRAINT failed_records_pkey PRIMARY KEY (uid);
CREATE INDEX ix_failed_records_batch ON bridge.failed_records (batch_uid);
CREATE INDEX ix_failed_records_retry ON bridge.failed_records (next_retry_at) WHERE resolved_at IS NULL;
CREATE INDEX ix_failed_records_entity ON bridge.failed_records (entity_name, stage_failed, created_at);
CREATE INDEX ix_failed_records_unresolved ON bridge.failed_records (entity_name, stage_failed, created_at)
    WHERE resolved_at IS NULL;
CREATE INDEX ix_failed_records_orphan_parent ON bridge.failed_records (parent_entity, parent_bk_hash)
    WHERE stage_failed = 'orphan' AND resolved_at IS NULL;
CREATE INDEX ix_failed_records_message ON bridge.failed_records (stream, stream_seq) WHERE resolved_at IS NULL;
-- Retention counts from resolution: prune finds the resolved rows by this.
CREATE INDEX ix_failed_records_resolved ON bridge.failed_records (resolved_at) WHERE resolved_at IS NOT NULL;
CREATE TRIGGER tg_failed_records_updated_at BEFORE UPDATE ON bridge.failed_records
    FOR EACH ROW EXECUTE FUNCTION bridge.touch_updated_at();

ALTER TABLE bridge.failed_records ADD CONSTRAINT failed_records_batch_uid_fkey
    FOREIGN KEY (batch_uid) REFERENCES bridge.sync_batches (uid) ON DELETE CASCADE;
ALTER TABLE bridge.pending_children ADD CONSTRAINT pending_children_batch_uid_fkey
    FOREIGN KEY (batch_uid) REFERENCES bridge.sync_batches (uid) ON DELETE CASCADE;
ALTER TABLE bridge.erp_sync_state ADD CONSTRAINT erp_sync_state_last_batch_uid_fkey
    FOREIGN KEY (last_batch_uid) REFERENCES bridge.sync_batches (uid) ON DELETE SET NULL;

-- One unresolved dead letter per message. The unique index that said so cannot
-- stay on a partitioned table without the partition key, so the claim moves to a
-- small table of its own: one row per message (stream, stream_seq) that has an
-- unresolved dead letter, naming it. Writers claim a message here (ON CONFLICT)
-- before they insert or update its dead letter; the triggers below keep the claim
-- in step with resolved_at whatever sets it (SyncFlow, or an operator in psql).
CREATE TABLE bridge.failed_record_messages (
    stream     text   NOT NULL,
    stream_seq bigint NOT NULL,
    failed_uid uuid   NOT NULL,
    CONSTRAINT pk_failed_record_messages PRIMARY KEY (stream, stream_seq),
    -- A claim never outlives its dead letter, however the dead letter goes
    -- (a TRUNCATE must cascade to the claims; a month holding claimed dead
    -- letters cannot be detached). Checked at commit: a writer claims a message
    -- before it writes the dead letter the claim names.
    CONSTRAINT fk_failed_record_messages_failed FOREIGN KEY (failed_uid)
        REFERENCES bridge.failed_records (uid) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX ix_failed_record_messages_failed ON bridge.failed_record_messages (failed_uid);
INSERT INTO bridge.failed_record_messages (stream, stream_seq, failed_uid)
SELECT stream, stream_seq, uid FROM bridge.failed_records
WHERE resolved_at IS NULL AND stream IS NOT NULL AND stream_seq IS NOT NULL;

CREATE FUNCTION bridge.failed_record_message_claim() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.resolved_at IS NULL AND OLD.stream IS NOT NULL AND OLD.stream_seq IS NOT NULL THEN
        DELETE FROM bridge.failed_record_messages
        WHERE stream = OLD.stream AND stream_seq = OLD.stream_seq AND failed_uid = OLD.uid;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.resolved_at IS NULL AND NEW.stream IS NOT NULL AND NEW.stream_seq IS NOT NULL THEN
        -- A second unresolved dead letter of one message fails here, as the
        -- unique index made it fail before.
        INSERT INTO bridge.failed_record_messages (stream, stream_seq, failed_uid)
        VALUES (NEW.stream, NEW.stream_seq, NEW.uid)
        ON CONFLICT (stream, stream_seq) DO UPDATE SET failed_uid = excluded.failed_uid
        WHERE bridge.failed_record_messages.failed_uid = excluded.failed_uid;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'message % sequence % already has an unresolved dead letter', NEW.stream, NEW.stream_seq
                USING ERRCODE = 'unique_violation', CONSTRAINT = 'pk_failed_record_messages';
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tg_failed_records_message_insert AFTER INSERT ON bridge.failed_records
    FOR EACH ROW EXECUTE FUNCTION bridge.failed_record_message_claim();
CREATE TRIGGER tg_failed_records_message_update AFTER UPDATE OF resolved_at, stream, stream_seq ON bridge.failed_records
    FOR EACH ROW WHEN (OLD.resolved_at IS DISTINCT FROM NEW.resolved_at OR OLD.stream IS DISTINCT FROM NEW.stream
                       OR OLD.stream_seq IS DISTINCT FROM NEW.stream_seq)
    EXECUTE FUNCTION bridge.failed_record_message_claim();
CREATE TRIGGER tg_failed_records_message_delete AFTER DELETE ON bridge.failed_records
    FOR EACH ROW EXECUTE FUNCTION bridge.failed_record_message_claim();

-- Making and dropping partitions, and deleting ledger rows, belong to the
-- schema's owner. The service and the operators' commands do them through these
-- functions, which run as the owner and do exactly one narrow thing each;
-- deploy/grants.sql says who may call which (nobody else may).
ALTER FUNCTION bridge.ensure_month_partitions(text, timestamptz, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION bridge.ensure_month_partitions(text, timestamptz, integer) FROM PUBLIC;

-- take_month_partition locks one month partition of parent against writers and
-- other prunes (for the archive and the checks that precede its drop);
-- drop_month_partition detaches and drops it. Both refuse anything but a month
-- partition of sync_batches or failed_records.
CREATE FUNCTION bridge.month_partition(parent text, partition text) RETURNS regclass
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    child regclass := to_regclass(format('bridge.%I', partition));
BEGIN
    IF parent NOT IN ('sync_batches', 'failed_records') OR child IS NULL
       OR partition !~ ('^' || parent || '_[0-9]{4}_[0-9]{2}$')
       OR NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = child AND inhparent = format('bridge.%I', parent)::regclass) THEN
        RAISE EXCEPTION 'bridge.%: no such month partition', partition USING ERRCODE = 'undefined_table';
    END IF;
    RETURN child;
END
$$;
REVOKE ALL ON FUNCTION bridge.month_partition(text, text) FROM PUBLIC;

CREATE FUNCTION bridge.take_month_partition(parent text, partition text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', bridge.month_partition(parent, partition));
END
$$;
REVOKE ALL ON FUNCTION bridge.take_month_partition(text, text) FROM PUBLIC;

CREATE FUNCTION bridge.drop_month_partition(parent text, partition text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    child regclass := bridge.month_partition(parent, partition);
BEGIN
    EXECUTE format('ALTER TABLE bridge.%I DETACH PARTITION %s', parent, child);
    EXECUTE format('DROP TABLE %s', child);
END
$$;
REVOKE ALL ON FUNCTION bridge.drop_month_partition(text, text) FROM PUBLIC;

-- prune_tombstones deletes up to lim ledger tombstones written before cutoff,
-- walking the primary key from (after_entity, after_hash), except those of keys
-- with an unresolved dead letter or a parked child, and those of an entity with
-- an unresolved dead letter whose key is unknown (one that failed before its key
-- was read: a retry replays its bytes, whatever key they hold), and returns them.
-- It deletes nothing else: the ledger's live rows are out of its reach.
CREATE FUNCTION bridge.prune_tombstones(cutoff timestamptz, after_entity text, after_hash text, lim integer)
RETURNS TABLE (entity_name text, bk_hash text, row_json text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH doomed AS (
        SELECT r.entity_name, r.bk_hash FROM bridge.synced_records r
        WHERE (r.entity_name, r.bk_hash) > (after_entity, after_hash) AND r.deleted AND r.updated_at < cutoff
          AND NOT EXISTS (SELECT 1 FROM bridge.failed_records f
                          WHERE f.entity_name = r.entity_name AND (f.bk_hash = r.bk_hash OR f.bk_hash IS NULL)
                            AND f.resolved_at IS NULL)
          AND NOT EXISTS (SELECT 1 FROM bridge.pending_children p
                          WHERE p.child_entity = r.entity_name AND p.child_bk_hash = r.bk_hash)
        ORDER BY r.entity_name, r.bk_hash
        LIMIT lim
        FOR UPDATE OF r SKIP LOCKED)
    DELETE FROM bridge.synced_records r USING doomed d
    WHERE r.entity_name = d.entity_name AND r.bk_hash = d.bk_hash AND r.deleted AND r.updated_at < cutoff
    RETURNING r.entity_name, r.bk_hash, row_to_json(r)::text
$$;
REVOKE ALL ON FUNCTION bridge.prune_tombstones(timestamptz, text, text, integer) FROM PUBLIC;
