package store_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/store"
)

func itemEvent(part string) string {
	return `{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"` + part + `"}}`
}

// orphansOfMissingItems dead letters n orphan work orders waiting for items
// that never come. They go in this month's partition, as the orphans of a
// test do, and their parents' hashes sort before any real one: the orphans
// written after them come after them however PostgreSQL reads the month.
func (f *fixture) orphansOfMissingItems(n int) {
	f.t.Helper()
	hashes := make([]string, n)
	for i := range hashes {
		hashes[i] = fmt.Sprintf("-never-%d", i+1)
	}
	f.orphansOf(hashes...)
}

// orphansOf dead letters an orphan work order waiting for each of the items
// of hashes.
func (f *fixture) orphansOf(hashes ...string) {
	f.t.Helper()
	if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.failed_records (uid, entity_name, raw_bytes, stage_failed, error_message,
			parent_entity, parent_bk_hash, next_retry_at)
		SELECT (left(bridge.uuid_floor(now())::text, 13) || '-7' || substr(gen_random_uuid()::text, 16))::uuid, 'work_orders', '\x7b7d',
		       'orphan', 'parent items not applied', 'items', h, now() + interval '1 day'
		FROM unnest($1::text[]) h`, hashes); err != nil {
		f.t.Fatal(err)
	}
}

// An item's batch asks for orphans by key only of the items orphans wait for.
// With orphans of items waiting for others (a site whose items never came),
// it runs neither the release of orphans nor the re-check's question of them,
// each a probe of every month of dead letters for every key; the item an
// orphan does wait for still gets it.
func TestOrphansOfOtherParentsAreNotAskedFor(t *testing.T) {
	trace := &roundTrips{}
	f := orphanFixture(t, woEvent("WO1", "2026-01-01T00:00:01Z", "waiting"), func(c *fixtureConfig) {
		c.Store = store.WithTracer(c.Store, trace)
	})
	if res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{}); err != nil || res.Orphaned != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	f.orphansOfMissingItems(3)
	trace.take()
	if res := f.apply("items", nil, itemEvent("P7")); res.Counts.Released != 0 {
		t.Fatalf("another item released %+v", res.Counts)
	}
	if trace.times("stage_failed = 'orphan'") == 0 {
		t.Fatal("the item's batch did not look for orphans at all")
	}
	if n := trace.times(store.ReleaseOrphansSQL); n != 0 {
		t.Errorf("the batch of an item no orphan waits for ran the release of orphans %d times", n)
	}
	if n := trace.times(store.ReleasableOrphanParentsSQL); n != 0 {
		t.Errorf("its re-check asked for orphans by key %d times", n)
	}
	trace.take()
	if res := f.apply("items", nil, itemEvent("P1")); res.Counts.Released != 1 {
		t.Fatalf("the item the orphan waits for: %+v", res.Counts)
	}
	if n := trace.times(store.ReleaseOrphansSQL); n != 1 {
		t.Errorf("the release of orphans ran %d times, want once", n)
	}
	if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders`); got != "WO1|waiting" {
		t.Fatalf("target %q", got)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL`); got != "3" {
		t.Fatalf("%s unresolved dead letters, want the 3 of missing items", got)
	}
}

// When more orphans wait than the list holds, every parent is asked by key:
// the release and the re-check's question still find the orphans of the
// batch's parents (written after the others, so that the list cut short
// leaves them out), and the question finds them either way.
func TestOrphansBeyondTheList(t *testing.T) {
	f := orphanFixture(t, woEvent("WO1", "2026-01-01T00:00:01Z", "waiting"))
	f.orphansOfMissingItems(store.OrphansListed + 1)
	if res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{}); err != nil || res.Orphaned != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if res := f.apply("items", nil, itemEvent("P1")); res.Counts.Released != 1 {
		t.Fatalf("the item the orphan waits for: %+v", res.Counts)
	}
	if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders`); got != "WO1|waiting" {
		t.Fatalf("target %q", got)
	}

	// An orphan of P2 dead lettered after P2's commit: the re-check's question.
	f.apply("items", nil, itemEvent("P2"))
	p1, p2 := f.rows(`SELECT bk_hash FROM bridge.synced_records WHERE entity_name = 'items' AND business_key::text LIKE '%"P1"%'`),
		f.rows(`SELECT bk_hash FROM bridge.synced_records WHERE entity_name = 'items' AND business_key::text LIKE '%"P2"%'`)
	parents := []apply.Key{{Entity: "items", Hash: "-never-1"}, {Entity: "items", Hash: p1}, {Entity: "items", Hash: p2}}
	for _, others := range []int{store.OrphansListed + 1, 3, 0} {
		if _, err := f.conn.Exec(f.ctx, `DELETE FROM bridge.failed_records WHERE resolved_at IS NULL`); err != nil {
			t.Fatal(err)
		}
		f.orphansOfMissingItems(others)
		f.orphansOf(p2)
		got, err := f.st.Releasable(f.ctx, parents)
		if err != nil {
			t.Fatal(err)
		}
		if want := parents[2:]; !slices.Equal(got, want) {
			t.Errorf("%d orphans of other items: releasable %v, want %v", others, got, want)
		}
	}
}

// The list holds each awaited parent once: a thousand orphans of one missing
// item (the operations of a work order that never came) do not cut it short,
// and the batch of another item still asks nothing by key.
func TestManyOrphansOfOneMissingParent(t *testing.T) {
	trace := &roundTrips{}
	f := orphanFixture(t, woEvent("WO1", "2026-01-01T00:00:01Z", "waiting"), func(c *fixtureConfig) {
		c.Store = store.WithTracer(c.Store, trace)
	})
	same := make([]string, store.OrphansListed+1)
	for i := range same {
		same[i] = "-never-the-same"
	}
	f.orphansOf(same...)
	trace.take()
	if res := f.apply("items", nil, itemEvent("P7")); res.Counts.Released != 0 {
		t.Fatalf("another item released %+v", res.Counts)
	}
	if n := trace.times(store.ReleaseOrphansSQL); n != 0 {
		t.Errorf("the batch of an item no orphan waits for ran the release of orphans %d times", n)
	}
	if n := trace.times(store.ReleasableOrphanParentsSQL); n != 0 {
		t.Errorf("its re-check asked for orphans by key %d times", n)
	}
}

// An unresolved orphan without a parent hash (only an operator's hand edit
// makes one) names no parent: the batches of its parent entity go on.
func TestAnOrphanWithoutAParentHash(t *testing.T) {
	f := orphanFixture(t, woEvent("WO1", "2026-01-01T00:00:01Z", "waiting"))
	f.orphansOf("-never-1")
	if _, err := f.conn.Exec(f.ctx, `UPDATE bridge.failed_records SET parent_bk_hash = NULL`); err != nil {
		t.Fatal(err)
	}
	f.apply("items", nil, itemEvent("P7")) // fails the test on an error
	if got := f.rows(`SELECT part_no FROM schedulehub.items`); got != "P7" {
		t.Fatalf("items %q, want P7", got)
	}
}

// The orphan list, a statement of a parent's write, failing (here its table is
// locked past the lock timeout) fails the whole batch: nothing of it is
// written, the orphan still waits, and the same batch written again once the
// table is free writes the parent and releases the orphan.
func TestAFailedOrphanListLeavesNothingHalfWritten(t *testing.T) {
	trace := &roundTrips{}
	f := orphanFixture(t, woEvent("WO1", "2026-01-01T00:00:01Z", "waiting"), func(c *fixtureConfig) {
		c.Store.LockTimeout = 200 * time.Millisecond
		c.Store = store.WithTracer(c.Store, trace)
	})
	if res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{}); err != nil || res.Orphaned != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	locker, err := pgx.Connect(f.ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(f.ctx)
	tx, err := locker.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(f.ctx, `LOCK TABLE bridge.failed_records IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	trace.take()
	if _, err := f.tryApply("items", nil, itemEvent("P1")); !errors.Is(err, apply.ErrConflict) {
		t.Fatalf("the parent's batch with its orphans' table locked: %v, want a lock timeout (a conflict)", err)
	}
	if trace.times("stage_failed = 'orphan'") == 0 {
		t.Fatal("the batch failed before it asked for orphans")
	}
	if err := tx.Rollback(f.ctx); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`SELECT count(*) FROM schedulehub.items`, `SELECT count(*) FROM schedulehub.work_orders`,
		`SELECT count(*) FROM bridge.synced_records WHERE entity_name IN ('items', 'work_orders')`} {
		if got := f.rows(q); got != "0" {
			t.Errorf("%s after the failed batch: %s", q, got)
		}
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE stage_failed = 'orphan' AND resolved_at IS NULL`); got != "1" {
		t.Errorf("unresolved orphans after the failed batch: %s", got)
	}
	if res := f.apply("items", nil, itemEvent("P1")); res.Counts.Inserted != 1 || res.Counts.Released != 1 {
		t.Fatalf("the batch again: %+v", res.Counts)
	}
	if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders`); got != "WO1|waiting" {
		t.Errorf("target %q", got)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL`); got != "0" {
		t.Errorf("unresolved dead letters: %s", got)
	}
}
