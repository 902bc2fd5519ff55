DROP TRIGGER IF EXISTS tg_catalog_versions_notify ON bridge.catalog_versions;
DROP FUNCTION IF EXISTS bridge.notify_catalog();
DROP TABLE IF EXISTS bridge.catalog_versions;
