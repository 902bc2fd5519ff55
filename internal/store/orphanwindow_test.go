package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
)

// hookStore is the store as an applier sees it, with a hook after the first
// ledger read of entity and one before each Releasable.
type hookStore struct {
	st           *store.Store
	entity       string
	afterRead    func()
	beforeAnyRel func() error
}

func (h *hookStore) InTx(ctx context.Context, fn func(apply.Tx) error) error {
	return h.st.InTx(ctx, func(tx apply.Tx) error { return fn(&hookTx{Tx: tx, h: h}) })
}

func (h *hookStore) Releasable(ctx context.Context, parents []apply.Key) ([]apply.Key, error) {
	if h.beforeAnyRel != nil {
		if err := h.beforeAnyRel(); err != nil {
			return nil, err
		}
	}
	return h.st.Releasable(ctx, parents)
}

func (h *hookStore) NoteCheckpoints(entity string, batch uuid.UUID, highs map[string]event.RowVersion) {
	h.st.NoteCheckpoints(entity, batch, highs)
}

type hookTx struct {
	apply.Tx
	h *hookStore
}

func (t *hookTx) ReadLedger(ctx context.Context, entity string, hashes []string, parents []apply.Key) (map[string]pipeline.Applied, map[apply.Key]bool, error) {
	a, p, err := t.Tx.ReadLedger(ctx, entity, hashes, parents)
	if err == nil && entity == t.h.entity && t.h.afterRead != nil {
		f := t.h.afterRead
		t.h.afterRead = nil
		f()
	}
	return a, p, err
}

// The sweeper orphans WO1 and commits between the ledger read of the batch that
// applies its parent P1 and that batch's write. The write looks for orphans of
// its parents after it has written them, so the parent's own transaction
// releases WO1, whatever becomes of the re-check after its commit: a parent
// deleted before that re-check runs, or a re-check that never runs, cannot
// strand it. (A review found the orphan stranded when the question whether
// orphans wait was asked with the ledger read, before the write.)
func TestAnOrphanMadeAfterTheLedgerReadGoesWithItsParent(t *testing.T) {
	for _, tc := range []string{"re-check runs", "parent deleted before the re-check", "re-check lost (shutdown)"} {
		t.Run(tc, func(t *testing.T) {
			f := orphanFixture(t, woEvent("WO1", "2026-01-01T00:00:01Z", "window"))
			h := &hookStore{st: f.st, entity: "items"}
			h.afterRead = func() {
				res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{})
				if err != nil || res.Orphaned != 1 {
					t.Errorf("sweep in the window: %+v %v", res, err)
				}
			}
			once := false
			h.beforeAnyRel = func() error {
				if once {
					return nil
				}
				once = true
				if tc == "parent deleted before the re-check" {
					// Another consumer's batch deletes P1 and commits before this
					// batch's (deferred, queued) re-check runs.
					f.apply("items", nil, `{"entity":"items","op":"delete","rowversion":"20260101000001","data":{"PART_NO":"P1"}}`)
					return nil
				}
				if tc == "re-check lost (shutdown)" {
					return context.Canceled
				}
				return nil
			}
			ap, err := apply.NewApplier(h, deadletter.Config{Park: deadletter.Backoff{FirstRetry: time.Hour, MaxDelay: time.Hour, MaxRetries: 3}}.Stamp(apply.Config{}))
			if err != nil {
				t.Fatal(err)
			}
			e, _ := f.cat.Entity("items")
			ds := []pipeline.Delivery{{Subject: "apismith.cdc.items", Source: event.Realtime, StreamSeq: 900,
				Data: []byte(`{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P1"}}`)}}
			res, err := ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, Source: event.Realtime, Replica: "hook",
				Deliveries: ds, Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds)})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("parent batch: released %d", res.Counts.Released)
			t.Logf("orphans (stage, resolved): %s", f.rows(`SELECT stage_failed, resolved_at IS NOT NULL FROM bridge.failed_records`))
			t.Logf("work orders: %q", f.rows(`SELECT order_no, status FROM schedulehub.work_orders`))
			if res.Counts.Released != 1 {
				t.Errorf("the parent's transaction released %d, want the orphan committed before its release (1)", res.Counts.Released)
			}
			if tc == "re-check lost (shutdown)" {
				sw, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{})
				t.Logf("next sweep round: %+v %v", sw, err)
			}
			if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders`); got != "WO1|window" {
				t.Errorf("work orders %q, want WO1|window", got)
			}
		})
	}
}

// Item P1 is applied and commits between the ledger read of the batch that
// parks WO1 and that batch's write, so WO1 parks with its parent applied; the
// re-check after the batch's commit, which would release it, fails. WO1 is then
// due for the sweeper now, not in the hour of its first wait, and the sweep
// releases it.
func TestAFailedRecheckLeavesItsChildrenDue(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.DeadLetters.Park = deadletter.Backoff{FirstRetry: time.Hour, MaxDelay: time.Hour, MaxRetries: 3}
	})
	f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:00Z", "site"))
	h := &hookStore{st: f.st, entity: "work_orders"}
	h.afterRead = func() {
		f.apply("items", nil, `{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P1"}}`)
	}
	failed := false
	h.beforeAnyRel = func() error {
		if failed {
			return nil
		}
		failed = true
		return errors.New("the connection was lost")
	}
	ap, err := apply.NewApplier(h, deadletter.Config{Park: deadletter.Backoff{FirstRetry: time.Hour, MaxDelay: time.Hour, MaxRetries: 3}}.Stamp(apply.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	e, _ := f.cat.Entity("work_orders")
	ds := []pipeline.Delivery{{Subject: "apismith.cdc.work_orders", Source: event.Realtime, StreamSeq: 900, Data: []byte(woEvent("WO1", "2026-01-01T00:00:01Z", "window"))}}
	res, err := ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, Source: event.Realtime, Replica: "hook",
		Deliveries: ds, Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts.Parked != 1 || !failed {
		t.Fatalf("the batch: %+v (re-check failed: %v); want WO1 parked", res.Counts, failed)
	}
	if got := f.rows(`SELECT child_entity, next_retry_at <= now() FROM bridge.pending_children`); got != "work_orders|true" {
		t.Errorf("parked after the failed re-check: %q, want WO1 due now", got)
	}
	sw, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{})
	if err != nil || sw.Released != 1 {
		t.Errorf("the sweep: %+v %v, want WO1 released", sw, err)
	}
	if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders`); got != "WO1|window" {
		t.Errorf("work orders %q, want WO1|window", got)
	}
}
