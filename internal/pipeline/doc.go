// Package pipeline holds the decisions SyncFlow makes about one fetched batch,
// without any I/O: decode → normalize → map → collapse (Prepare), and, given what the
// ledger says is applied, which rows to write (Decide).
//
// # Order and idempotence
//
// Every version carries (rowversion, source stream, stream sequence), and versions
// of one key are totally ordered (Compare): a higher rowversion wins; on equal
// rowversions a realtime version beats a backfill copy (realtime carries every
// change in order, a backfill copy is a snapshot that may have been read between
// two changes of one second, and IFS does not bump the rowversion on a delete);
// within one stream the later sequence wins (two changes in the same second). As
// the order is total, the final state does not depend on the order in which the
// two streams are delivered. The very same event again (same stream and sequence)
// supersedes only if its mapped payload differs, which happens when it is re-run
// after a mapping change.
//
// Outcomes, counted per delivery: inserted (new key, or a key whose tombstone is
// superseded), updated (payload changed), unchanged (same payload: the target is not
// written), stale (older than applied, or superseded by a newer version of the same
// key in the same batch), deleted, failed. Deletes leave a tombstone in the ledger so
// that a stale upsert arriving later never resurrects the row.
//
// The store re-checks the same rule in SQL when it writes the ledger, so two replicas
// racing on one key cannot apply an older version over a newer one.
//
// It imports only event, catalog, normalize and mapping, never a driver.
package pipeline
