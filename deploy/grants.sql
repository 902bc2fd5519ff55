-- The rights on the bridge tables, for the roles of deploy/roles.sql. Run as
-- bridge_owner (who owns the tables) after every `syncflow migrate up`; safe to
-- run again. It fails if a table is missing: migrate first.
--
-- bridge_user, the service, applies batches: the ledger, the checkpoints, the
-- batches, parked children and dead letters are written as a batch commits; the
-- mapping rules are only read; schedules are advanced by the backfill.
GRANT SELECT, INSERT, UPDATE ON
    bridge.synced_records,
    bridge.erp_sync_state,
    bridge.sync_batches,
    bridge.failed_records
TO bridge_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON bridge.pending_children TO bridge_user;
GRANT SELECT ON bridge.field_mappings TO bridge_user;
GRANT SELECT, UPDATE ON bridge.background_sync_schedule TO bridge_user;
GRANT SELECT ON bridge.catalog_versions TO bridge_user;
GRANT SELECT, INSERT, UPDATE ON bridge.unmapped_fields TO bridge_user;
-- A verify night records its verification.
GRANT SELECT, INSERT, UPDATE ON bridge.verifications TO bridge_user;
-- The claims of "one unresolved dead letter per message" follow the dead letters.
GRANT SELECT, INSERT, UPDATE, DELETE ON bridge.failed_record_messages TO bridge_user;
-- The service makes the months ahead of sync_batches and failed_records.
GRANT EXECUTE ON FUNCTION bridge.ensure_month_partitions(text, timestamptz, integer) TO bridge_user;

-- bridge_operator is a bridge_user, and also changes the mapping rules, the
-- schedules and the catalog, purges resolved dead letters and prunes old batches.
GRANT SELECT, INSERT, UPDATE, DELETE ON bridge.field_mappings TO bridge_operator;
GRANT SELECT, INSERT, UPDATE, DELETE ON bridge.background_sync_schedule TO bridge_operator;
GRANT DELETE ON bridge.failed_records, bridge.sync_batches TO bridge_operator;
GRANT INSERT ON bridge.catalog_versions TO bridge_operator;
GRANT DELETE ON bridge.unmapped_fields TO bridge_operator;
-- prune drops whole months past retention and old ledger tombstones, through
-- functions that can do nothing else.
GRANT EXECUTE ON FUNCTION bridge.take_month_partition(text, text), bridge.drop_month_partition(text, text),
    bridge.prune_tombstones(timestamptz, text, text, integer) TO bridge_operator;
-- prune reports the rows no month partition took.
GRANT SELECT ON bridge.sync_batches_default, bridge.failed_records_default TO bridge_operator;

-- Whatever a later migration adds is nobody's until this file grants it.
REVOKE ALL ON ALL TABLES IN SCHEMA bridge FROM PUBLIC;
