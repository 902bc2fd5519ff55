-- SyncFlow's database roles. Run once per database as a superuser, before the
-- first `syncflow migrate up`; safe to run again.
--
--   bridge_owner  owns the bridge schema: runs the migrations (syncflow migrate).
--   bridge_user   what syncflow run, backfill and the operator commands use: read
--                 and write the bridge tables and ScheduleHub's target tables,
--                 read the migration version; nothing else (no DDL, no other schema).
--
-- Set their passwords afterwards, e.g. ALTER ROLE bridge_user PASSWORD '...';
-- (or use certificates), and keep them in a secret store, not in this file.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bridge_owner') THEN
        CREATE ROLE bridge_owner LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bridge_user') THEN
        CREATE ROLE bridge_user LOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO bridge_owner', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO bridge_user', current_database());
END
$$;

-- The migration version table lives in public.
GRANT USAGE, CREATE ON SCHEMA public TO bridge_owner;
GRANT USAGE ON SCHEMA public TO bridge_user;
ALTER DEFAULT PRIVILEGES FOR ROLE bridge_owner IN SCHEMA public GRANT SELECT ON TABLES TO bridge_user;

-- The bridge schema is created by the first migration, as bridge_owner; create it
-- here so that the grants below have something to hold on to.
CREATE SCHEMA IF NOT EXISTS bridge AUTHORIZATION bridge_owner;
GRANT USAGE ON SCHEMA bridge TO bridge_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA bridge TO bridge_user;
ALTER DEFAULT PRIVILEGES FOR ROLE bridge_owner IN SCHEMA bridge
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO bridge_user;

-- ScheduleHub's target tables: SyncFlow writes rows, never the tables themselves.
CREATE SCHEMA IF NOT EXISTS schedulehub;
GRANT USAGE ON SCHEMA schedulehub TO bridge_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA schedulehub TO bridge_user;
