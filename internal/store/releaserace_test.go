package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

func wcEvent(contract, wc, rv string) string {
	return fmt.Sprintf(`{"entity":"work_centers","op":"upsert","rowversion":%q,"data":{"CONTRACT":%q,"WORK_CENTER_NO":%q}}`, rv, contract, wc)
}

// A parent's write releases its waiting children in its own pipeline. When two
// transactions write the same parent, the one that loses the race took (and
// held, until its savepoint's rollback) the children that the winner's re-check
// after its commit looks for; the re-check skips rows another transaction holds.
// The loser then re-checks every parent of that first write after its own
// commit, and the child parked meanwhile is released, not left for the sweeper
// half a minute later. A trigger that sleeps on the take of a parked child
// keeps the loser inside its release while the winner re-checks.
func TestAChildTakenByTheLoserOfARaceIsReleasedAfterItsCommit(t *testing.T) {
	f := newFixture(t)
	const r1, r2 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"
	if _, err := f.conn.Exec(f.ctx, `CREATE FUNCTION public.slow_take() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF OLD.child_entity = 'work_centers' THEN PERFORM pg_sleep(2); END IF; RETURN OLD; END $$;
CREATE TRIGGER slow_take BEFORE DELETE ON bridge.pending_children FOR EACH ROW EXECUTE FUNCTION public.slow_take();`); err != nil {
		t.Fatal(err)
	}
	batches, release := f.batchesFirstHeld("sites", 2)
	e, _ := f.cat.Entity("sites")
	type result struct {
		res apply.Result
		err error
	}
	won := make(chan result, 1)
	go func() {
		ds := []pipeline.Delivery{raceVersion{event.Realtime, 100, siteEvent("upsert", "S1", r2, "newer")}.delivery("sites")}
		res, err := f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: batches[0], Source: event.Realtime, Replica: "winner",
			Deliveries: ds, Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds), DeferRecheck: true})
		won <- result{res, err}
	}()
	f.waitForLockWaits(1) // the winner wrote S1 (its release found nothing) and waits to count its batch
	// A child arrives meanwhile: S1 is not committed, so it is parked.
	if res := f.apply("work_centers", nil, wcEvent("S1", "WC1", r1)); res.Counts.Parked != 1 {
		t.Fatalf("parking: %+v", res.Counts)
	}
	lost := f.applyAsync("sites", raceVersion{event.Realtime, 50, siteEvent("upsert", "S1", r1, "older")}, batches[1])
	f.waitForLockWaits(2) // the loser waits for S1's target row
	release()
	r := <-won
	if r.err != nil {
		t.Fatal(r.err)
	}
	taking := false
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && !taking; time.Sleep(10 * time.Millisecond) {
		taking = f.rows(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'`) != "0"
	}
	if !taking {
		t.Fatal("the loser never took the parked child: the test did not test the race")
	}
	r.res.Recheck(f.ctx) // the winner's re-check after its commit, while the loser holds the child
	if got := f.rows(`SELECT count(*) FROM bridge.pending_children`); got != "1" {
		t.Fatalf("%s children parked after the winner's re-check, want the one the loser holds: the test did not test the race", got)
	}
	if err := <-lost; err != nil {
		t.Fatal(err)
	}
	if got := f.rows(`SELECT contract, description FROM schedulehub.sites`); got != "S1|newer" {
		t.Errorf("sites: %q, want the newer version", got)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.pending_children`); got != "0" {
		t.Errorf("%s child still parked though its parent is applied", got)
	}
	if got := f.rows(`SELECT contract, work_center_no FROM schedulehub.work_centers`); got != "S1|WC1" {
		t.Errorf("work centers: %q, want the released child", got)
	}
}
