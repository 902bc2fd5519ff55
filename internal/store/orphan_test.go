package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
)

// orphanFixture parks work order WO1 under its missing item P1 (the site is there),
// one re-check away from becoming an orphan and due now.
func orphanFixture(t *testing.T, body string, tune ...func(*fixtureConfig)) *fixture {
	t.Helper()
	f := newFixture(t, append([]func(*fixtureConfig){func(c *fixtureConfig) {
		c.DeadLetters.Park = deadletter.Backoff{FirstRetry: time.Hour, MaxDelay: time.Hour, MaxRetries: 3}
	}}, tune...)...)
	f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:00Z", "site"))
	f.applyAt("work_orders", []uint64{500}, body)
	if _, err := f.conn.Exec(f.ctx, `UPDATE bridge.pending_children SET retry_count = 2, next_retry_at = now() - interval '1s'`); err != nil {
		t.Fatal(err)
	}
	return f
}

const spacedWorkOrder = "{ \"entity\" : \"work_orders\", \"op\":\"upsert\",\"rowversion\":\"2026-01-01T00:00:01Z\",\n  \"data\":{\"ORDER_NO\":\"WO1\",\"CONTRACT\":\"S1\",\"PART_NO\":\"P1\",\"STATUS\":\"caf\\u00e9\"} }"

// An orphan keeps the event's bytes exactly as received and the parent it waited
// for; the parent's arrival, however late, releases it and resolves the dead
// letter.
func TestOrphanIsReleasedWhenItsParentArrives(t *testing.T) {
	f := orphanFixture(t, spacedWorkOrder)
	res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{})
	if err != nil || res.Orphaned != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	var raw []byte
	if err := f.conn.QueryRow(f.ctx, `SELECT raw_bytes FROM bridge.failed_records WHERE stage_failed = 'orphan' AND parent_entity = 'items' AND stream_seq = 500`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if string(raw) != spacedWorkOrder {
		t.Fatalf("orphan raw bytes %q, want the event as received %q", raw, spacedWorkOrder)
	}
	item := f.apply("items", nil, `{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P1"}}`)
	if item.Counts.Released != 1 {
		t.Fatalf("item: %+v", item.Counts)
	}
	if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders`); got != "WO1|café" {
		t.Fatalf("target: %q", got)
	}
	if got := f.rows(`SELECT resolved_at IS NOT NULL, resolution_note FROM bridge.failed_records`); got != "true|released: the parent it waited for was applied" {
		t.Fatalf("dead letter: %s", got)
	}
}

// The sweeper orphans a child at its last re-check while the parent commits at
// that very moment, in both commit orders. The parent's release skips the child
// the sweeper holds, and the sweeper does not see the uncommitted parent; the
// re-checks after the commits release the orphan whichever commits last.
func TestOrphanRaceWithTheParent(t *testing.T) {
	for _, order := range []string{"parent commits first", "sweeper commits first"} {
		t.Run(order, func(t *testing.T) {
			f := orphanFixture(t, woEvent("WO1", "2026-01-01T00:00:01Z", "raced"))
			// Hold the sweeper just before it writes the orphan: an uncommitted dead
			// letter of the same message makes its insert wait.
			block, err := f.conn.Begin(f.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := block.Exec(f.ctx, `INSERT INTO bridge.failed_records (uid, entity_name, stream, stream_seq, raw_bytes, stage_failed, error_message)
				VALUES (gen_random_uuid(), 'work_orders', $1, 500, '', 'decode', 'blocker')`, event.Realtime.Stream); err != nil {
				t.Fatal(err)
			}
			swept := make(chan error, 1)
			go func() {
				res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{})
				if err == nil && res.Orphaned != 1 {
					err = fmt.Errorf("sweep %+v, want one orphan", res)
				}
				swept <- err
			}()
			f.waitForLockWaits(1)
			item := raceVersion{event.Realtime, 900, `{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P1"}}`}
			if order == "parent commits first" {
				if err := <-f.applyAsync("items", item, f.batch); err != nil {
					t.Fatal(err)
				}
				if err := block.Rollback(f.ctx); err != nil {
					t.Fatal(err)
				}
				if err := <-swept; err != nil {
					t.Fatal(err)
				}
			} else {
				other, err := pgx.Connect(f.ctx, f.url) // block holds f.conn's transaction
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close(f.ctx)
				b := testUID()
				if _, err := other.Exec(f.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type) VALUES ($1, 'items', 'realtime')`, b); err != nil {
					t.Fatal(err)
				}
				hold, err := other.Begin(f.ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := hold.Exec(f.ctx, `SELECT 1 FROM bridge.sync_batches WHERE uid = $1 FOR UPDATE`, b); err != nil {
					t.Fatal(err)
				}
				applied := f.applyAsync("items", item, b)
				f.waitForLockWaits(2) // the parent has skipped the child and waits to count its batch
				if err := block.Rollback(f.ctx); err != nil {
					t.Fatal(err)
				}
				if err := <-swept; err != nil {
					t.Fatal(err)
				}
				if err := hold.Commit(f.ctx); err != nil {
					t.Fatal(err)
				}
				if err := <-applied; err != nil {
					t.Fatal(err)
				}
			}
			if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders`); got != "WO1|raced" {
				t.Fatalf("target %q: the child was lost between the sweeper and its parent; dead letters:\n%s", got,
					f.rows(`SELECT stage_failed, resolved_at IS NOT NULL, error_message FROM bridge.failed_records`))
			}
			if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL`); got != "0" {
				t.Fatalf("%s unresolved dead letters", got)
			}
		})
	}
}

// An operator's "re-check now" neither uses up a child's re-checks nor orphans it.
func TestManualReleaseKeepsTheBudget(t *testing.T) {
	f := orphanFixture(t, woEvent("WO1", "2026-01-01T00:00:01Z", "waiting"))
	uid := f.rows(`SELECT uid::text FROM bridge.pending_children`)
	for _, sel := range []deadletter.ParkedSelection{{UIDs: []uuid.UUID{mustUID(t, uid)}}, {All: true}} {
		res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", sel)
		if err != nil || res.Orphaned != 0 || res.Released != 0 || res.Waiting != 1 {
			t.Fatalf("%+v: %+v %v", sel, res, err)
		}
	}
	if got := f.rows(`SELECT retry_count FROM bridge.pending_children`); got != "2" {
		t.Fatalf("retry_count %s, want 2 (unchanged)", got)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records`); got != "0" {
		t.Fatalf("%s dead letters", got)
	}
	// The sweeper's own re-check still orphans it.
	if res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{}); err != nil || res.Orphaned != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if !strings.Contains(f.rows(`SELECT error_message FROM bridge.failed_records`), "the parent's arrival still releases it") {
		t.Fatal("the orphan's reason does not say how it ends")
	}
}

func mustUID(t *testing.T, s string) uuid.UUID {
	t.Helper()
	u, err := uuid.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// Orphans have a safety net like parked children: when the re-checks after their
// parent's commit do not run (the process killed, the batch's deadline passed),
// the sweeper's rounds release the orphans whose parent is applied.
func TestSweeperReleasesOrphansWhoseParentIsApplied(t *testing.T) {
	f := newFixture(t)
	const children = 2500 // more than one release takes
	for start := 0; start < children; start += 500 {
		var bodies []string
		for i := start; i < start+500; i++ {
			bodies = append(bodies, fmt.Sprintf(`{"entity":"work_centers","op":"upsert","rowversion":"2026-01-01T00:00:01Z","data":{"CONTRACT":"S1","WORK_CENTER_NO":"WC%05d"}}`, i))
		}
		f.apply("work_centers", nil, bodies...)
	}
	for {
		res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{Expire: true})
		if err != nil {
			t.Fatal(err)
		}
		if !res.More {
			break
		}
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE stage_failed = 'orphan' AND resolved_at IS NULL`); got != fmt.Sprint(children) {
		t.Fatalf("%s orphans", got)
	}
	// The parent commits; its re-checks find the context ended (as if the
	// process died right after the commit).
	e, _ := f.cat.Entity("sites")
	ds := []pipeline.Delivery{{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: 99999, Data: []byte(siteEvent("upsert", "S1", "2026-01-01T00:00:00Z", "site"))}}
	ctx, cancel := context.WithCancel(f.ctx)
	cut := &cancelAfterCommit{Store: f.st, cancel: cancel}
	ap, err := apply.NewApplier(cut, deadletter.Config{}.Stamp(apply.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ap.ApplyBatch(ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, NewBatch: f.fresh, Source: event.Realtime,
		Replica: "test", Deliveries: ds, Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds)}); err != nil {
		t.Fatal(err)
	}
	f.fresh = false
	left := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE stage_failed = 'orphan' AND resolved_at IS NULL`)
	if left == "0" {
		t.Fatal("the parent's own transaction released every orphan; the test did not test the safety net")
	}
	for range 10 {
		res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{})
		if err != nil {
			t.Fatal(err)
		}
		if !res.More {
			break
		}
	}
	if got := f.rows(`SELECT count(*) FROM schedulehub.work_centers`); got != fmt.Sprint(children) {
		t.Fatalf("%s work centers applied, want %d (%s orphans were left after the parent's commit)", got, children, left)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL`); got != "0" {
		t.Fatalf("%s unresolved dead letters", got)
	}
}

// cancelAfterCommit ends the context of the work it carries right after the
// first commit, before the re-checks that follow it.
type cancelAfterCommit struct {
	*store.Store
	cancel context.CancelFunc
}

func (c *cancelAfterCommit) InTx(ctx context.Context, fn func(apply.Tx) error) error {
	err := c.Store.InTx(ctx, fn)
	c.cancel()
	return err
}
