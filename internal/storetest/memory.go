// Package storetest is for tests of the core: an in-memory store (Memory) that
// implements the interfaces of apply and deadletter with the semantics of the
// PostgreSQL store, and a contract suite (Contract) that runs the same cases
// against both, so that the two cannot drift apart. Only test files import it; it
// imports neither pgx nor nats.go.
//
// # What Memory keeps
//
// The bridge tables as maps, one file per table like the store's: the ledger
// (ledger.go), the parked children (parked.go), the dead letters (failed.go), the
// batch rows (batches.go) and the target tables (targets.go). Each statement of
// the store is one method, with the store's rules: a version is written only where
// it supersedes (pipeline.Supersedes), one parked row per child, one unresolved
// dead letter per message, rows naming a batch only when the batch row exists, a
// key written twice in one statement rejected.
//
// # Transactions
//
// A transaction works on a copy of the tables and replaces them when it commits;
// transactions run one at a time. A savepoint copies them again and goes back to
// the copy when its function fails. As in PostgreSQL, a statement that fails
// outside a savepoint aborts the transaction: every later statement fails, and so
// does the commit. Time is the transaction's start (now() in PostgreSQL), read
// from Memory.Now.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
)

// Memory is an in-memory store: an apply.Store, and through DeadLetters a
// deadletter.Store.
type Memory struct {
	// Now is the clock (default time.Now); NewUID generates primary keys (default
	// UUIDv7, ordered by creation as the store's are).
	Now    func() time.Time
	NewUID func() uuid.UUID

	cat *catalog.Catalog

	mu          sync.Mutex
	st          *state
	checkpoints map[checkpointKey]event.RowVersion
	// Faults injected by tests: rows a target rejects, children whose parking
	// fails, keys whose next ledger write another transaction wins.
	rejects     []reject
	breakParked map[string]error // by child key hash
	outrun      map[string]bool  // by key hash
}

var (
	_ apply.Store      = (*Memory)(nil)
	_ deadletter.Store = DeadLetters{}
	_ apply.Tx         = (*tx)(nil)
	_ deadletter.Tx    = (*tx)(nil)
)

// NewMemory returns an empty store whose target tables are those of cat's
// entities.
func NewMemory(cat *catalog.Catalog) *Memory {
	return &Memory{Now: time.Now, NewUID: func() uuid.UUID { return uuid.Must(uuid.NewV7()) }, cat: cat,
		st: newState(), checkpoints: map[checkpointKey]event.RowVersion{}, breakParked: map[string]error{}, outrun: map[string]bool{}}
}

// state is the tables.
type state struct {
	ledger  map[apply.Key]ledgerRow
	parked  map[apply.Key]parkedRow // by child
	failed  map[uuid.UUID]failedRow
	batches map[uuid.UUID]batchRow
	targets map[string]map[string]map[string]any // entity -> target key -> row
}

func newState() *state {
	return &state{ledger: map[apply.Key]ledgerRow{}, parked: map[apply.Key]parkedRow{}, failed: map[uuid.UUID]failedRow{},
		batches: map[uuid.UUID]batchRow{}, targets: map[string]map[string]map[string]any{}}
}

// clone copies the tables. Rows are values and never changed in place (a row
// that changes is stored anew), so copying the maps copies the state.
func (s *state) clone() *state {
	c := &state{ledger: maps.Clone(s.ledger), parked: maps.Clone(s.parked), failed: maps.Clone(s.failed),
		batches: maps.Clone(s.batches), targets: make(map[string]map[string]map[string]any, len(s.targets))}
	for e, rows := range s.targets {
		c.targets[e] = maps.Clone(rows)
	}
	return c
}

// InTx runs fn in one transaction and commits when fn returns nil (apply.Store).
func (m *Memory) InTx(ctx context.Context, fn func(apply.Tx) error) error {
	return m.inTx(ctx, func(t *tx) error { return fn(t) })
}

// DeadLetters is the store as the sweeper and the retry worker use it
// (deadletter.Store).
type DeadLetters struct{ *Memory }

// DeadLetters returns the store as a deadletter.Store.
func (m *Memory) DeadLetters() DeadLetters { return DeadLetters{m} }

// InTx runs fn in one transaction and commits when fn returns nil.
func (d DeadLetters) InTx(ctx context.Context, fn func(deadletter.Tx) error) error {
	return d.inTx(ctx, func(t *tx) error { return fn(t) })
}

// errAborted is what PostgreSQL answers to a statement in a transaction that a
// failed statement aborted (25P02, of no kind the core knows).
var errAborted = errors.New("storetest: current transaction is aborted, commands ignored until end of transaction block")

func (m *Memory) inTx(ctx context.Context, fn func(*tx) error) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t := &tx{m: m, st: m.st.clone(), now: m.Now()}
	if err := fn(t); err != nil {
		return err
	}
	if t.aborted {
		return fmt.Errorf("storetest: commit: %w", errAborted)
	}
	m.st = t.st
	return nil
}

// ctxErr is the error of a statement run after ctx ended, classified as the store
// classifies it: a deadline is a timeout, a cancel stays itself.
func ctxErr(ctx context.Context) error {
	switch err := ctx.Err(); {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", apply.ErrTimeout, err)
	default:
		return err
	}
}

// tx is one transaction.
type tx struct {
	m       *Memory
	st      *state
	now     time.Time
	aborted bool
}

// stmt starts a statement: it fails when the transaction is aborted or ctx has
// ended.
func (t *tx) stmt(ctx context.Context) error {
	if t.aborted {
		return errAborted
	}
	if err := ctxErr(ctx); err != nil {
		t.aborted = true
		return err
	}
	return nil
}

// fail ends a statement with err, aborting the transaction.
func (t *tx) fail(err error) error {
	t.aborted = true
	return err
}

// Savepoint runs fn under a savepoint, rolled back when fn fails.
func (t *tx) Savepoint(ctx context.Context, fn func() error) error {
	if err := t.stmt(ctx); err != nil {
		return err
	}
	saved := t.st.clone()
	if err := fn(); err != nil {
		t.st, t.aborted = saved, false
		return err
	}
	if t.aborted {
		// A statement under it failed though fn went on: rolled back all the same.
		t.st, t.aborted = saved, false
		return errAborted
	}
	return nil
}

// SetStatementTimeout sets nothing: no statement in memory takes long enough to
// be cut short (a test makes one time out with FailParking and apply.ErrTimeout).
func (t *tx) SetStatementTimeout(ctx context.Context, _ time.Duration) error {
	return t.stmt(ctx)
}

// rejected is a row refused by a constraint, as the store classifies it.
func rejected(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{apply.ErrRowRejected}, args...)...)
}

// needBatch is the foreign key of the bridge tables to sync_batches.
func (t *tx) needBatch(uid uuid.UUID, table string) error {
	if _, ok := t.st.batches[uid]; !ok {
		return rejected("insert or update on table %q violates foreign key constraint: batch %s is not present in sync_batches", table, uid)
	}
	return nil
}

// present reports whether k is applied: in the ledger and not deleted.
func (s *state) present(k apply.Key) bool {
	r, ok := s.ledger[k]
	return ok && !r.Deleted
}

// Releasable returns which of parents are applied now and have children or
// orphans waiting (apply.Store), in parents' order.
func (m *Memory) Releasable(ctx context.Context, parents []apply.Key) ([]apply.Key, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	waited := map[apply.Key]bool{}
	for _, p := range m.st.parked {
		if m.st.present(p.Parent) {
			waited[p.Parent] = true
		}
	}
	for _, f := range m.st.failed {
		if f.releasable(m.st) {
			waited[*f.Parent] = true
		}
	}
	return apply.KeysIn(parents, waited), nil
}

type checkpointKey struct{ entity, source string }

// NoteCheckpoints keeps the highest committed rowversion per entity and source
// system (apply.Store).
func (m *Memory) NoteCheckpoints(entity string, _ uuid.UUID, highs map[string]event.RowVersion) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for src, rv := range highs {
		k := checkpointKey{entity, src}
		if h, ok := m.checkpoints[k]; !ok || rv.Ord > h.Ord {
			m.checkpoints[k] = rv
		}
	}
}

// Checkpoint returns the highest rowversion of entity and source system noted.
func (m *Memory) Checkpoint(entity, sourceSystem string) (event.RowVersion, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rv, ok := m.checkpoints[checkpointKey{entity, sourceSystem}]
	return rv, ok
}

func keySet(keys []apply.Key) map[apply.Key]bool {
	set := make(map[apply.Key]bool, len(keys))
	for _, k := range keys {
		set[k] = true
	}
	return set
}
