package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
)

func woOn(op, order, contract, rv, status string) string {
	if op == "delete" {
		return fmt.Sprintf(`{"entity":"work_orders","op":"delete","rowversion":%q,"data":{"ORDER_NO":%q}}`, rv, order)
	}
	return fmt.Sprintf(`{"entity":"work_orders","op":"upsert","rowversion":%q,"data":{"ORDER_NO":%q,"CONTRACT":%q,"PART_NO":"P1","STATUS":%q}}`, rv, order, contract, status)
}

// An upsert decided Unchanged (newer version, the payload the unlocked read
// shows) whose child is deleted in between (B commits after A's read): the
// version order (v1, delete v2, upsert v3 whose parent is missing) parks v3, and
// so does the race, for an unchanged upsert's parents are checked too.
func TestAnUnchangedChildWhoseParentIsGoneIsParked(t *testing.T) {
	f := newFixture(t)
	const t0, t1, t15, t2, t3 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:01.5Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"
	held := keyBefore("WO0", "WO1")
	setup := func() {
		f.truncate()
		f.applyParents()
		f.apply("sites", nil, siteEvent("upsert", "S2", t0, "doomed"))
		f.apply("work_orders", nil, woOn("upsert", "WO1", "S2", t1, "open"))
		f.apply("sites", nil, siteEvent("delete", "S2", t15, "")) // the parent is gone; the child stays
		f.apply("work_orders", nil, woOn("upsert", held, "S1", t1, "x"))
	}
	state := func() string {
		return "target=" + f.rows(`SELECT order_no, contract FROM schedulehub.work_orders WHERE order_no = 'WO1'`) +
			" parked=" + f.rows(`SELECT parent_entity, parent_key::text FROM bridge.pending_children WHERE child_entity = 'work_orders'`) +
			" sites=" + f.rows(`SELECT contract FROM schedulehub.sites WHERE contract = 'S2'`)
	}

	// Serially: B (delete v2) then A (upsert v3).
	setup()
	f.apply("work_orders", nil, woOn("delete", "WO1", "", t2, ""))
	f.apply("work_orders", nil, woOn("upsert", held, "S1", t3, "y"), woOn("upsert", "WO1", "S2", t3, "open"))
	serial := state()

	// Racing: A reads the ledger (WO1 at v1), B commits the delete, A writes.
	setup()
	bA, bB := testUID(), testUID()
	if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type) VALUES ($1, 'work_orders', 'realtime'), ($2, 'work_orders', 'realtime')`, bA, bB); err != nil {
		t.Fatal(err)
	}
	release := f.holdRows(`SELECT 1 FROM schedulehub.work_orders WHERE order_no = $1 FOR UPDATE`, held)
	doneA := f.applyManyAsync("work_orders", 100, bA, woOn("upsert", held, "S1", t3, "y"), woOn("upsert", "WO1", "S2", t3, "open"))
	f.waitForLockWaits(1)
	if err := <-f.applyAsync("work_orders", raceVersion{event.Realtime, 50, woOn("delete", "WO1", "", t2, "")}, bB); err != nil {
		t.Fatalf("B: %v", err)
	}
	release()
	if err := <-doneA; err != nil {
		t.Fatalf("A: %v", err)
	}
	raced := state()
	t.Logf("serial: %s", serial)
	t.Logf("raced:  %s", raced)
	if raced != serial {
		t.Errorf("the race ends in %q, the version order in %q", raced, serial)
	}
}

// The sweeper locks a due parked child, finds its parent missing and sets its
// next re-check; a parent committed meanwhile skips the child (SKIP LOCKED) in
// its transaction and in its re-check after commit. The sweeper re-checks the
// parents of the children it made wait after its commit, and releases it.
func TestAParentAppliedDuringASweepReleasesTheChild(t *testing.T) {
	f := newFixture(t)
	f.apply("items", nil, `{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P1"}}`)
	res := f.apply("work_orders", nil, woEvent("WO1", "2026-01-01T00:00:01Z", "open"))
	if res.Counts.Parked != 1 {
		t.Fatalf("counts %+v", res.Counts)
	}
	if _, err := f.conn.Exec(f.ctx, `UPDATE bridge.pending_children SET next_retry_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	f.sleepWhen("bridge.slow_wait", "BEFORE UPDATE ON bridge.pending_children", "NEW.retry_count <> OLD.retry_count", 1.5)
	done := make(chan error, 1)
	go func() {
		_, err := f.dl.Sweep(f.ctx, f.cat, nil, "sweeper", deadletter.ParkedSelection{})
		done <- err
	}()
	// The sweeper read the parent missing and sleeps in WaitParked, holding the row.
	deadline := 0
	for f.rows(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'`) != "1" {
		if deadline++; deadline > 500 {
			t.Fatal("the sweeper never reached its wait")
		}
		_, _ = f.conn.Exec(f.ctx, `SELECT pg_stat_clear_snapshot()`)
		time.Sleep(10 * time.Millisecond)
	}
	res = f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:00Z", "site"))
	t.Logf("site batch: released %d", res.Counts.Released)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := f.rows(`SELECT count(*) FROM schedulehub.work_orders`) + " parked=" +
		f.rows(`SELECT retry_count, next_retry_at > now() + interval '20 seconds' FROM bridge.pending_children`)
	t.Logf("work orders written / parked row: %s", got)
	if got != "1 parked=" {
		t.Errorf("the parent is applied but the child is still parked: %s", got)
	}
}
