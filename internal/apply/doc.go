// Package apply writes one batch in one transaction, and decides everything that
// happens inside it: which rows the ledger lets through (with pipeline.Decide),
// which children wait for a missing parent and under which one, which parked
// children a parent's arrival releases (bounded: ReleaseLimit rows and
// ReleaseBytes of events per transaction, the rest marked due), how a release
// cascades down the catalog, how a rejected row is isolated by bisecting the
// batch under savepoints, and how the batch's counts add up.
//
// It carries its decisions out through Tx, a small interface a store implements
// (lock ledger rows, parents present, park, take released, write the ledger,
// write the target under a savepoint, add dead letters, add batch counts), and
// classifies failures by kind (ErrRowRejected, ErrUnavailable, ErrConflict,
// ErrTimeout) with errors.Is only.
//
// It stands on the core floor: it imports event, catalog, normalize, mapping and
// pipeline, and never pgx, nats.go or the adapters (internal/layers checks).
package apply
