package storetest

import (
	"context"
	"fmt"
	"io/fs"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/streams"
)

// Catalog returns the shipped catalog (streams/catalog.yaml): sites, work centers
// (children of sites), items, work orders (of sites and items) and work order
// operations (of work orders and work centers).
func Catalog(t testing.TB) *catalog.Catalog {
	t.Helper()
	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// Env is a backend with the core over it: an Applier and DeadLetters, and a
// consumer's view of a stream to feed events through them.
type Env struct {
	Backend
	Ctx         context.Context
	Catalog     *catalog.Catalog
	Config      deadletter.Config
	Applier     *apply.Applier
	DeadLetters *deadletter.DeadLetters

	// Rules are the mapping rules Apply prepares with (nil: none); Source is the
	// stream Apply's events come from (default realtime); IsolateTimeouts is
	// set on Apply's batches (as on a batch that kept timing out).
	Rules           *mapping.Set
	Source          event.Source
	IsolateTimeouts bool

	seq   uint64
	batch uuid.UUID
	fresh bool
}

// Policy is the contract's: long waits, so that nothing is due unless a case
// makes it due, and few re-checks and retries.
var Policy = deadletter.Config{
	Park:  deadletter.Backoff{FirstRetry: time.Hour, MaxDelay: 8 * time.Hour, MaxRetries: 3},
	Retry: deadletter.Backoff{FirstRetry: time.Hour, MaxDelay: 8 * time.Hour, MaxRetries: 3},
}

// NewEnv returns the core over b, with the dead-letter policy cfg.
func NewEnv(t testing.TB, b Backend, cat *catalog.Catalog, cfg deadletter.Config) *Env {
	t.Helper()
	ap, err := apply.NewApplier(b.ApplyStore(), cfg.Stamp(apply.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	dl, err := deadletter.New(b.DeadLetterStore(), ap, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Backend: b, Ctx: context.Background(), Catalog: cat, Config: cfg.WithDefaults(), Applier: ap, DeadLetters: dl,
		Source: event.Realtime, batch: uuid.Must(uuid.NewV7()), fresh: true}
}

// Deliveries returns bodies as the next messages of entity's subject in the
// env's stream.
func (e *Env) Deliveries(entity string, bodies ...string) []pipeline.Delivery {
	ds := make([]pipeline.Delivery, len(bodies))
	for i, b := range bodies {
		e.seq++
		ds[i] = pipeline.Delivery{Subject: e.Source.Subject(entity), Source: e.Source, StreamSeq: e.seq, Data: []byte(b)}
	}
	return ds
}

// Apply applies bodies as one fetched batch of entity's consumer, counted in the
// env's batch row, and fails t on an error.
func (e *Env) Apply(t testing.TB, entity string, bodies ...string) apply.Result {
	t.Helper()
	res, err := e.TryApply(entity, e.Deliveries(entity, bodies...))
	if err != nil {
		t.Fatalf("applying %d %s: %v", len(bodies), entity, err)
	}
	return res
}

// TryApply applies deliveries as one fetched batch of entity's consumer.
func (e *Env) TryApply(entity string, ds []pipeline.Delivery) (apply.Result, error) {
	return e.ApplyWith(e.Applier, entity, ds)
}

// ApplyWith applies deliveries with another applier (over a wrapped store).
func (e *Env) ApplyWith(a *apply.Applier, entity string, ds []pipeline.Delivery) (apply.Result, error) {
	ent, ok := e.Catalog.Entity(entity)
	if !ok {
		return apply.Result{}, fmt.Errorf("no entity %q", entity)
	}
	prepared := pipeline.Preparer{Catalog: e.Catalog, Rules: e.Rules}.Prepare(ds)
	res, err := a.ApplyBatch(e.Ctx, apply.Batch{Entity: ent, Catalog: e.Catalog, Rules: e.Rules, BatchUID: e.batch, NewBatch: e.fresh,
		Source: e.Source, Replica: "test", Deliveries: ds, Prepared: prepared, IsolateTimeouts: e.IsolateTimeouts})
	if err == nil {
		e.fresh = false
	}
	return res, err
}

// Sweep runs one sweep of the parked children sel chooses, and fails t on an
// error.
func (e *Env) Sweep(t testing.TB, sel deadletter.ParkedSelection) deadletter.SweepResult {
	t.Helper()
	res, err := e.DeadLetters.Sweep(e.Ctx, e.Catalog, e.Rules, "test", sel)
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	return res
}

// Retry runs one retry of the dead letters sel chooses, and fails t on an error.
func (e *Env) Retry(t testing.TB, sel deadletter.Selection) deadletter.RetryResult {
	t.Helper()
	res, err := e.DeadLetters.Retry(e.Ctx, e.Catalog, e.Rules, "test", sel)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	return res
}

// InTx runs fn in a transaction of the backend's apply.Store.
func (e *Env) InTx(fn func(apply.Tx) error) error { return e.ApplyStore().InTx(e.Ctx, fn) }

// InDeadLetterTx runs fn in a transaction of the backend's deadletter.Store.
func (e *Env) InDeadLetterTx(fn func(deadletter.Tx) error) error {
	return e.DeadLetterStore().InTx(e.Ctx, fn)
}

// NewBatch creates a batch row of entity and returns it.
func (e *Env) NewBatch(t testing.TB, entity string) apply.BatchRow {
	t.Helper()
	b := apply.BatchRow{UID: uuid.Must(uuid.NewV7()), Entity: entity, SourceSystem: e.Catalog.SourceSystem, SyncType: "realtime", Replica: "test"}
	if err := e.InTx(func(tx apply.Tx) error { return tx.CountBatch(e.Ctx, b, pipeline.Counts{}, false) }); err != nil {
		t.Fatal(err)
	}
	return b
}

// Unnoticed writes events of entity into the ledger and the target and nothing
// else: a transaction that did not see the children waiting for them (another
// replica's, racing theirs, or one whose process died before its re-checks).
// Nothing is released.
func (e *Env) Unnoticed(t testing.TB, entity string, bodies ...string) {
	t.Helper()
	p := pipeline.Preparer{Catalog: e.Catalog, Rules: e.Rules}.Prepare(e.Deliveries(entity, bodies...))
	if len(p.Failures) > 0 {
		t.Fatalf("%s: %v", entity, p.Failures[0].Err)
	}
	b := e.NewBatch(t, entity)
	rows := make([]apply.LedgerRow, len(p.Candidates))
	var upserts []apply.TargetRow
	var deletes []map[string]any
	for i, c := range p.Candidates {
		deleted := c.Record.Op == event.OpDelete
		rows[i] = apply.LedgerRow{Record: c.Record, Version: c.Version, Deleted: deleted}
		if deleted {
			deletes = append(deletes, c.Row)
		} else {
			upserts = append(upserts, apply.TargetRow{BKHash: c.Record.BKHash, Row: c.Row})
		}
	}
	if err := e.InTx(func(tx apply.Tx) error {
		if _, err := tx.WriteLedger(e.Ctx, entity, b.UID, rows); err != nil {
			return err
		}
		return tx.WriteTarget(e.Ctx, entity, upserts, deletes)
	}); err != nil {
		t.Fatal(err)
	}
}

// Committed sums the counts of every batch row.
func (e *Env) Committed(t testing.TB) pipeline.Counts {
	t.Helper()
	var c pipeline.Counts
	for _, b := range e.BatchRows(t) {
		c.Merge(b.Counts)
	}
	return c
}

// NoRecheck is a store whose re-checks after a commit find nothing to release, as
// when the process dies right after the commit: what a transaction leaves is left
// to the sweeper.
type NoRecheck struct{ apply.Store }

// Releasable finds nothing.
func (NoRecheck) Releasable(context.Context, []apply.Key) ([]apply.Key, error) { return nil, nil }

// Hash returns the key hash of key values (event.HashKey).
func Hash(values ...string) string { return event.HashKey(values) }

// The events of the shipped catalog's entities. Rowversions are seconds of
// 2026-01-01 (RV); items send objversions.

// RV is the rowversion of second s of 2026-01-01, as an RFC 3339 timestamp.
func RV(s int) string {
	return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(s) * time.Second).Format(time.RFC3339)
}

// Site is an upsert of site contract.
func Site(contract string, rv int, desc string) string {
	return fmt.Sprintf(`{"entity":"sites","op":"upsert","rowversion":%q,"data":{"CONTRACT":%q,"DESCRIPTION":%q}}`, RV(rv), contract, desc)
}

// SiteDeleted is a delete of site contract.
func SiteDeleted(contract string, rv int) string {
	return fmt.Sprintf(`{"entity":"sites","op":"delete","rowversion":%q,"data":{"CONTRACT":%q}}`, RV(rv), contract)
}

// WorkCenter is an upsert of work center wc of site contract.
func WorkCenter(contract, wc string, rv int, desc string) string {
	return fmt.Sprintf(`{"entity":"work_centers","op":"upsert","rowversion":%q,"data":{"CONTRACT":%q,"WORK_CENTER_NO":%q,"DESCRIPTION":%q}}`,
		RV(rv), contract, wc, desc)
}

// WorkCenterDeleted is a delete of work center wc of site contract.
func WorkCenterDeleted(contract, wc string, rv int) string {
	return fmt.Sprintf(`{"entity":"work_centers","op":"delete","rowversion":%q,"data":{"CONTRACT":%q,"WORK_CENTER_NO":%q}}`, RV(rv), contract, wc)
}

// Item is an upsert of item part (an objversion rowversion).
func Item(part string, rv int, desc string) string {
	v := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rv) * time.Second).Format("20060102150405")
	return fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":%q,"data":{"PART_NO":%q,"DESCRIPTION":%q}}`, v, part, desc)
}

// WorkOrder is an upsert of work order order of site contract and item part.
func WorkOrder(order, contract, part string, rv int, status string) string {
	return fmt.Sprintf(`{"entity":"work_orders","op":"upsert","rowversion":%q,"data":{"ORDER_NO":%q,"CONTRACT":%q,"PART_NO":%q,"STATUS":%q}}`,
		RV(rv), order, contract, part, status)
}

// Operation is an upsert of operation op of work order order, at work center wc
// of site contract.
func Operation(order string, op int, contract, wc string, rv int, desc string) string {
	return fmt.Sprintf(`{"entity":"work_order_operations","op":"upsert","rowversion":%q,"data":{"ORDER_NO":%q,"OPERATION_NO":%d,"CONTRACT":%q,"WORK_CENTER_NO":%q,"DESCRIPTION":%q}}`,
		RV(rv), order, op, contract, wc, desc)
}
