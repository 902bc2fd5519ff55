DROP TABLE IF EXISTS bridge.verifications;
ALTER TABLE bridge.background_sync_schedule
    DROP CONSTRAINT IF EXISTS ck_background_sync_schedule_mode,
    DROP COLUMN IF EXISTS mode;
ALTER TABLE bridge.synced_records RESET (fillfactor);
ALTER TABLE bridge.synced_records
    DROP COLUMN IF EXISTS target_hash,
    DROP COLUMN IF EXISTS target_key;
