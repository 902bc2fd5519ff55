// Package pipeline holds the decisions SyncFlow makes about one fetched batch,
// without any I/O: decode → normalize → map → collapse (Prepare), and, given what the
// ledger says is applied, which rows to write (Decide).
//
// # Order and idempotence
//
// Every version carries (rowversion, source stream, stream sequence). An incoming
// version supersedes the applied one when its rowversion is higher; when the
// rowversions are equal, only a later event of the same stream supersedes (two
// changes in the same second), and an equal version from the other stream keeps what
// is applied. The very same event again (same stream and sequence) supersedes only if
// its mapped payload differs, which happens when it is re-run after a mapping change.
//
// Outcomes, counted per delivery: inserted (new key, or a key whose tombstone is
// superseded), updated (payload changed), unchanged (same payload: the target is not
// written), stale (older than applied, or superseded by a newer version of the same
// key in the same batch), deleted, failed. Deletes leave a tombstone in the ledger so
// that a stale upsert arriving later never resurrects the row.
//
// The store re-checks the same rule in SQL when it writes the ledger, so two replicas
// racing on one key cannot apply an older version over a newer one.
package pipeline
