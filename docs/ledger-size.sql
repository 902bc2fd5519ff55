-- The bytes one ledger row and its index entries take, measured on a million
-- realistic rows (make ledger-size; it runs in a scratch database it drops).
-- One batch per 500 rows. A key is a 64-character hex SHA-256, the business key two fields, the
-- rowversion an IFS timestamp, the payload hash 32 bytes, the target's key and hash as
-- verify keeps them (a two-column key as text, 8 bytes).
\set ON_ERROR_STOP on
\set rows 1000000
DROP DATABASE IF EXISTS syncflow_ledger_size;
CREATE DATABASE syncflow_ledger_size;
\c syncflow_ledger_size
\i migrations/0001_bridge_schema.up.sql
\i migrations/0002_dead_letter_identity.up.sql
\i migrations/0003_catalog_versions.up.sql
\i migrations/0004_unmapped_fields.up.sql
\i migrations/0005_monthly_partitions.up.sql
\i migrations/0006_verification.up.sql
\i migrations/0007_ledger_hot_updates.up.sql
-- One batch per 500 rows, as a busy realtime consumer writes them.
INSERT INTO bridge.sync_batches (uid, entity_name, sync_type)
SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(b), 12, '0'))::uuid, 'work_orders', 'realtime'
FROM generate_series(0, :rows / 500) b;
INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, payload_hash, deleted, batch_uid, target_key, target_hash)
SELECT 'work_orders', encode(sha256(i::text::bytea), 'hex'),
       jsonb_build_object('ORDER_NO', 'WO-' || lpad(i::text, 7, '0'), 'RELEASE_NO', '1'),
       to_char(timestamp '2026-01-01' + i * interval '1 second', 'YYYY-MM-DD"T"HH24:MI:SS'),
       i, 'realtime', i, sha256(('p' || i)::bytea), false,
       ('00000000-0000-7000-8000-' || lpad(to_hex(i / 500), 12, '0'))::uuid,
       '(WO-' || lpad(i::text, 7, '0') || ',1)', int8send(hashtextextended(i::text, 0))
FROM generate_series(1, :rows) i;
VACUUM ANALYZE bridge.synced_records;
SELECT c.relname AS relation,
       pg_size_pretty(pg_relation_size(c.oid)) AS size,
       round(pg_relation_size(c.oid)::numeric / :rows, 1) AS bytes_per_row
FROM pg_class c
WHERE c.oid IN ('bridge.synced_records'::regclass, 'bridge.pk_synced_records'::regclass)
UNION ALL
SELECT 'total (with TOAST and maps)', pg_size_pretty(pg_total_relation_size('bridge.synced_records')),
       round(pg_total_relation_size('bridge.synced_records')::numeric / :rows, 1);
\c postgres
DROP DATABASE syncflow_ledger_size;
