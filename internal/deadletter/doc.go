// Package deadletter turns the records SyncFlow could not apply into work that gets
// finished: a sweeper re-checks parked children, a retry worker re-runs dead letters,
// and a drain dead-letters the messages JetStream gave up delivering. It decides
// (release, orphan or wait; resolve or fail again, and when to try next) and owns
// the policies (Backoff); a Store carries the decisions out in SQL.
//
// It imports the core (pipeline, apply) and neither pgx nor nats.go.
//
// # Parked children
//
// A child whose parent has not been applied waits in bridge.pending_children. Its
// parent's transaction normally releases it; the sweeper re-checks it at
// next_retry_at anyway (the parent may have come by a path that did not release
// it), waiting twice as long each time, and after max_retries turns it into a dead
// letter at stage orphan that names the missing parent, whose arrival still
// releases it. An operator's "re-check now" neither counts a re-check nor orphans.
//
// # Dead letters
//
// Dead letters of the stages mapping, write and max_deliver are retried by the
// worker at next_retry_at, with exponential backoff, until max_retries; decode,
// normalization and orphan dead letters are not (the same bytes would fail the same
// way until someone changes the catalog, the publisher or the parent data), but any
// dead letter can be re-run by hand (`syncflow dlq retry`). A retry runs the record
// through the current pipeline; any outcome but a failure resolves it. One record
// that fails in an unforeseen way fails again on its own and does not hold back the
// others.
package deadletter
