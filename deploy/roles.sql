-- SyncFlow's database roles. Run as a superuser (or the database owner), once
-- before the first `syncflow migrate up`; safe to run again.
--
--   bridge_owner     owns the bridge schema: runs the migrations (syncflow migrate),
--                    then deploy/grants.sql.
--   bridge_user      the service (syncflow run, syncflow backfill): applies batches.
--                    It writes the catalog's target tables and the bridge tables a
--                    batch writes; it reads the mapping rules and may not change
--                    them, and may not delete dead letters or batches.
--   bridge_operator  the operators' commands (dlq, parked, prune, mappings,
--                    schedule, replay, status): what the service may do, and also
--                    change the mapping rules and schedules, purge dead letters and
--                    prune batches.
--
-- Nobody gets more than that: no DDL, no other schema, and of ScheduleHub's tables
-- only the catalog's targets, one by one (a test checks this list against
-- streams/catalog.yaml). When you add an entity to the catalog, add its table to
-- the list below and run this file again.
--
-- Set the passwords afterwards, e.g. ALTER ROLE bridge_user PASSWORD '...';
-- (or use certificates), and keep them in a secret store, not in this file.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['bridge_owner', 'bridge_user', 'bridge_operator'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
    END LOOP;
    EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO bridge_owner', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO bridge_user, bridge_operator', current_database());
    -- syncflow verify (and a verify night) compares in temporary tables.
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO bridge_user, bridge_operator', current_database());
END
$$;

-- The operator may do what the service does, and a little more (deploy/grants.sql).
GRANT bridge_user TO bridge_operator;

-- The migration version table lives in public: the owner creates it, the others
-- read it (to check the schema version).
GRANT USAGE, CREATE ON SCHEMA public TO bridge_owner;
GRANT USAGE ON SCHEMA public TO bridge_user;
ALTER DEFAULT PRIVILEGES FOR ROLE bridge_owner IN SCHEMA public GRANT SELECT ON TABLES TO bridge_user;

-- The bridge schema is created by the first migration, as bridge_owner; create it
-- here so that it is the owner's. The rights on its tables are in grants.sql,
-- which bridge_owner runs after each `syncflow migrate up`.
CREATE SCHEMA IF NOT EXISTS bridge AUTHORIZATION bridge_owner;
GRANT USAGE ON SCHEMA bridge TO bridge_user;

-- ScheduleHub's target tables, the catalog's and no other: SyncFlow writes rows,
-- never the tables themselves.
CREATE SCHEMA IF NOT EXISTS schedulehub;
GRANT USAGE ON SCHEMA schedulehub TO bridge_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    schedulehub.sites,
    schedulehub.work_centers,
    schedulehub.items,
    schedulehub.work_orders,
    schedulehub.work_order_operations
TO bridge_user;
