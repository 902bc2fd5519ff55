-- The entity catalog, stored: every process reads the newest version, so that
-- every replica and every command works from one catalog, and running replicas
-- follow a new version without a restart (NOTIFY below, and a periodic resync).
-- Versions are kept: `syncflow catalog history` lists them, `catalog show
-- --version N` prints one exactly as it was applied.
CREATE TABLE bridge.catalog_versions (
    uid uuid PRIMARY KEY,
    version integer NOT NULL,
    -- The YAML as applied, byte for byte (comments included), so that `catalog
    -- show` prints what was reviewed and a diff between environments is a diff
    -- of files.
    document text NOT NULL,
    document_sha256 text NOT NULL,
    applied_by text NOT NULL,
    note text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_catalog_versions_version UNIQUE (version),
    CONSTRAINT ck_catalog_versions_version CHECK (version > 0)
);

-- A new version, or `syncflow catalog refresh` (payload 'refresh'), reaches the
-- running services through NOTIFY.
CREATE FUNCTION bridge.notify_catalog() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bridge_catalog', NEW.version::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER tg_catalog_versions_notify AFTER INSERT ON bridge.catalog_versions
    FOR EACH ROW EXECUTE FUNCTION bridge.notify_catalog();
