-- ScheduleHub's input tables for the demo ERP model (see streams/catalog.yaml).
-- Column names are the lower-cased APISmith field names, so the demo works without
-- field-mapping rules. Each table has a unique key on the catalog's target key,
-- which SyncFlow's upserts need. Idempotent: safe to apply again.
CREATE SCHEMA IF NOT EXISTS schedulehub;

CREATE TABLE IF NOT EXISTS schedulehub.sites (
    contract    text PRIMARY KEY,
    description text,
    company     text,
    time_zone   text,
    synced_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS schedulehub.work_centers (
    contract         text NOT NULL,
    work_center_no   text NOT NULL,
    description      text,
    work_center_code text,
    capacity_hours   numeric(12, 2),
    synced_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contract, work_center_no)
);

CREATE TABLE IF NOT EXISTS schedulehub.items (
    part_no       text PRIMARY KEY,
    description   text,
    unit_meas     text,
    part_status   text,
    lead_time_days integer,
    deleted_at    timestamptz,
    synced_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS schedulehub.work_orders (
    order_no       text PRIMARY KEY,
    contract       text NOT NULL,
    part_no        text NOT NULL,
    lot_size       numeric(14, 4) CHECK (lot_size > 0),
    status         text,
    need_date      date,
    start_date     timestamptz,
    synced_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS schedulehub.work_order_operations (
    order_no        text    NOT NULL,
    operation_no    integer NOT NULL,
    contract        text,
    work_center_no  text,
    description     text,
    setup_hours     numeric(10, 2),
    run_hours       numeric(10, 2),
    status          text,
    synced_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_no, operation_no)
);

-- synced_at says when SyncFlow last wrote the row: on every insert (the default)
-- and every update (this trigger), so an upsert that changes a row moves it too.
CREATE OR REPLACE FUNCTION schedulehub.touch_synced_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.synced_at := now();
    RETURN NEW;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sites', 'work_centers', 'items', 'work_orders', 'work_order_operations'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS touch_synced_at ON schedulehub.%I', t);
        EXECUTE format('CREATE TRIGGER touch_synced_at BEFORE UPDATE ON schedulehub.%I FOR EACH ROW EXECUTE FUNCTION schedulehub.touch_synced_at()', t);
    END LOOP;
END
$$;
