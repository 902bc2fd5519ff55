-- The ledger's index on batch_uid served the foreign key to sync_batches (ON
-- DELETE SET NULL had to find a batch's ledger rows), which 0005 dropped; no
-- statement looks the ledger up by batch since. It cost every ledger write: a
-- second index entry for each new key, and, since every write sets batch_uid,
-- an update of an existing key could never be heap-only (HOT) and wrote a new
-- entry into both indexes. Without it, a key written again on a page with room
-- (fillfactor 85, 0006) touches no index.
DROP INDEX IF EXISTS bridge.ix_synced_records_batch;
