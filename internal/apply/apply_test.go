package apply_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/storetest"
)

// The decisions of applying, over the memory store (internal/storetest), which
// keeps the contract the PostgreSQL store keeps.

var (
	P = pipeline.Parked
	I = pipeline.Inserted
	U = pipeline.Updated
	N = pipeline.Unchanged
	S = pipeline.Stale
	D = pipeline.Deleted
	F = pipeline.Failed
)

// deadletterDue chooses the parked children due for the sweeper.
var deadletterDue = deadletter.ParkedSelection{}

// now is the memory store's clock: it does not move unless a test moves it.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newEnv(t *testing.T) (*storetest.Env, *storetest.Memory) {
	t.Helper()
	cat := storetest.Catalog(t)
	m := storetest.NewMemory(cat)
	m.Now = func() time.Time { return now }
	return storetest.NewEnv(t, m, cat, storetest.Policy), m
}

// batch is one fetched batch of entity, and the outcome of each event.
type batch struct {
	entity   string
	events   []string
	outcomes []pipeline.Outcome
	released int64 // children the batch's parents released in its transaction
}

func (b batch) run(t *testing.T, e *storetest.Env) apply.Result {
	t.Helper()
	res := e.Apply(t, b.entity, b.events...)
	if b.outcomes != nil && !slices.Equal(res.Outcomes, b.outcomes) {
		t.Fatalf("%s %q: outcomes %v, want %v", b.entity, b.events, res.Outcomes, b.outcomes)
	}
	if res.Counts.Released != b.released {
		t.Fatalf("%s: released %d, want %d", b.entity, res.Counts.Released, b.released)
	}
	return res
}

// parked writes the parked children as ParkedEntry.String does.
func parked(t *testing.T, e *storetest.Env) []string {
	t.Helper()
	var out []string
	for _, p := range e.ParkedRows(t) {
		out = append(out, p.String())
	}
	return out
}

func waits(child, key, parent, parentKey string, rv, retries int) string {
	return fmt.Sprintf("%s %s waits for %s %s (%s, re-checked %d of 3)", child, key, parent, parentKey, storetest.RV(rv), retries)
}

// written says whether entity's key is in the ledger (deleted or not) or the
// target.
func written(t *testing.T, e *storetest.Env, entity string, key ...string) bool {
	t.Helper()
	for _, l := range e.LedgerRows(t) {
		if l.Entity == entity && l.Hash == storetest.Hash(key...) {
			return true
		}
	}
	ent, _ := e.Catalog.Entity(entity)
	want := strings.Join(key, "|")
	return slices.Contains(e.TargetRows(t, entity, ent.Target.Key...), want)
}

func TestParking(t *testing.T) {
	wc1 := storetest.WorkCenter("S1", "WC1", 1, "saw")
	for _, c := range []struct {
		name    string
		batches []batch
		parked  []string
	}{
		{"a child whose parent is missing is parked", []batch{
			{"work_centers", []string{wc1}, []pipeline.Outcome{P}, 0},
		}, []string{waits("work_centers", `["S1" "WC1"]`, "sites", `["S1"]`, 1, 0)}},
		{"a child whose parent is applied is written", []batch{
			{"sites", []string{storetest.Site("S1", 1, "")}, []pipeline.Outcome{I}, 0},
			{"work_centers", []string{wc1}, []pipeline.Outcome{I}, 0},
		}, nil},
		{"a deleted parent is missing", []batch{
			{"sites", []string{storetest.Site("S1", 1, "")}, []pipeline.Outcome{I}, 0},
			{"sites", []string{storetest.SiteDeleted("S1", 2)}, []pipeline.Outcome{D}, 0},
			{"work_centers", []string{wc1}, []pipeline.Outcome{P}, 0},
		}, []string{waits("work_centers", `["S1" "WC1"]`, "sites", `["S1"]`, 1, 0)}},
		{"a child waits for its first missing parent, in catalog order", []batch{
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 1, "")}, []pipeline.Outcome{P}, 0},
		}, []string{waits("work_orders", `["WO1"]`, "sites", `["S1"]`, 1, 0)}},
		{"a child waits for the one parent missing", []batch{
			{"sites", []string{storetest.Site("S1", 1, "")}, []pipeline.Outcome{I}, 0},
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 1, "")}, []pipeline.Outcome{P}, 0},
		}, []string{waits("work_orders", `["WO1"]`, "items", `["P1"]`, 1, 0)}},
		{"a newer version of a parked child replaces it", []batch{
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 5, "")}, []pipeline.Outcome{P}, 0},
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 9, "")}, []pipeline.Outcome{P}, 0},
		}, []string{waits("work_orders", `["WO1"]`, "sites", `["S1"]`, 9, 0)}},
		{"an older version than the parked one is stale", []batch{
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 9, "")}, []pipeline.Outcome{P}, 0},
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 7, "")}, []pipeline.Outcome{S}, 0},
		}, []string{waits("work_orders", `["WO1"]`, "sites", `["S1"]`, 9, 0)}},
		{"of versions of a child in one batch, the newest is parked", []batch{
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 9, ""), storetest.WorkOrder("WO1", "S1", "P1", 5, "")},
				[]pipeline.Outcome{P, S}, 0},
		}, []string{waits("work_orders", `["WO1"]`, "sites", `["S1"]`, 9, 0)}},
		{"a delete is never parked", []batch{
			{"work_centers", []string{storetest.WorkCenterDeleted("S1", "WC1", 1)}, []pipeline.Outcome{D}, 0},
		}, nil},
		{"children of one batch wait for their own parents", []batch{
			{"sites", []string{storetest.Site("S1", 1, "")}, []pipeline.Outcome{I}, 0},
			{"work_centers", []string{wc1, storetest.WorkCenter("S2", "WC1", 1, ""), storetest.WorkCenter("S1", "WC2", 1, "")},
				[]pipeline.Outcome{I, P, I}, 0},
		}, []string{waits("work_centers", `["S2" "WC1"]`, "sites", `["S2"]`, 1, 0)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, _ := newEnv(t)
			for _, b := range c.batches {
				b.run(t, e)
			}
			got := parked(t, e)
			if !slices.Equal(got, c.parked) {
				t.Fatalf("parked:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(c.parked, "\n"))
			}
			for _, p := range e.ParkedRows(t) {
				if written(t, e, p.Child.Entity, p.ChildKey...) {
					t.Errorf("parked %s is written too", p)
				}
				if p.Wait() != storetest.Policy.Park.FirstRetry || p.Due {
					t.Errorf("parked %s is re-checked after %v, want %v", p, p.Wait(), storetest.Policy.Park.FirstRetry)
				}
			}
		})
	}
}

func TestRelease(t *testing.T) {
	for _, c := range []struct {
		name    string
		batches []batch
		// arrange, when set, runs after the batch of that index.
		arrange map[int]func(*testing.T, *storetest.Env)
		parked  []string
		// target holds the rows of entities' targets, by their key columns.
		target map[string][]string
		// checkpoints holds the checkpoint of entities (their highest rowversion
		// applied), released children's too.
		checkpoints map[string]string
	}{
		{name: "a parent releases its children", batches: []batch{
			{"work_centers", []string{storetest.WorkCenter("S1", "WC1", 1, ""), storetest.WorkCenter("S1", "WC2", 1, "")}, []pipeline.Outcome{P, P}, 0},
			{"sites", []string{storetest.Site("S1", 1, "")}, []pipeline.Outcome{I}, 2},
		}, target: map[string][]string{"work_centers": {"S1|WC1", "S1|WC2"}}},
		{name: "a release runs down the catalog: site, work center, operation", batches: []batch{
			{"sites", []string{storetest.Site("S1", 1, "")}, nil, 0},
			{"items", []string{storetest.Item("P1", 1, "")}, nil, 0},
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 1, "")}, []pipeline.Outcome{I}, 0},
			{"work_centers", []string{storetest.WorkCenter("S2", "WC1", 1, "")}, []pipeline.Outcome{P}, 0},
			{"work_order_operations", []string{storetest.Operation("WO1", 10, "S2", "WC1", 1, ""), storetest.Operation("WO1", 20, "S2", "WC1", 1, "")},
				[]pipeline.Outcome{P, P}, 0},
			{"sites", []string{storetest.Site("S2", 1, "")}, []pipeline.Outcome{I}, 3},
		}, target: map[string][]string{"work_centers": {"S2|WC1"}, "work_order_operations": {"WO1|10", "WO1|20"}},
			checkpoints: map[string]string{"work_centers": storetest.RV(1), "work_order_operations": storetest.RV(1)}},
		{name: "a released child whose other parent is missing waits again, for that one, afresh", batches: []batch{
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 1, "")}, []pipeline.Outcome{P}, 0},
			{"sites", []string{storetest.Site("S1", 1, "")}, []pipeline.Outcome{I}, 1},
		}, arrange: map[int]func(*testing.T, *storetest.Env){
			0: func(t *testing.T, e *storetest.Env) { e.SetParkedRetries(t, 2) },
		}, parked: []string{waits("work_orders", `["WO1"]`, "items", `["P1"]`, 1, 0)}, target: map[string][]string{"work_orders": nil}},
		{name: "the second parent releases the child that waited again", batches: []batch{
			{"work_orders", []string{storetest.WorkOrder("WO1", "S1", "P1", 1, "")}, []pipeline.Outcome{P}, 0},
			{"sites", []string{storetest.Site("S1", 1, "")}, []pipeline.Outcome{I}, 1},
			{"items", []string{storetest.Item("P1", 1, "")}, []pipeline.Outcome{I}, 1},
		}, target: map[string][]string{"work_orders": {"WO1"}}},
		{name: "a parked child deleted since is released as stale", batches: []batch{
			{"work_centers", []string{storetest.WorkCenter("S1", "WC1", 5, "")}, []pipeline.Outcome{P}, 0},
			{"work_centers", []string{storetest.WorkCenterDeleted("S1", "WC1", 7)}, []pipeline.Outcome{D}, 0},
			{"sites", []string{storetest.Site("S1", 1, "")}, []pipeline.Outcome{I}, 1},
		}, target: map[string][]string{"work_centers": nil}},
		{name: "deleting a parent releases nothing", batches: []batch{
			{"work_centers", []string{storetest.WorkCenter("S1", "WC1", 1, "")}, []pipeline.Outcome{P}, 0},
			{"sites", []string{storetest.SiteDeleted("S1", 1)}, []pipeline.Outcome{D}, 0},
		}, parked: []string{waits("work_centers", `["S1" "WC1"]`, "sites", `["S1"]`, 1, 0)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, m := newEnv(t)
			for i, b := range c.batches {
				b.run(t, e)
				if f := c.arrange[i]; f != nil {
					f(t, e)
				}
			}
			if got := parked(t, e); !slices.Equal(got, c.parked) {
				t.Fatalf("parked:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(c.parked, "\n"))
			}
			for entity, want := range c.target {
				ent, _ := e.Catalog.Entity(entity)
				if got := e.TargetRows(t, entity, ent.Target.Key...); !slices.Equal(got, want) {
					t.Errorf("%s: %v, want %v", entity, got, want)
				}
			}
			if c := e.Committed(t); !c.Balanced() {
				t.Errorf("committed counts do not add up: %+v", c)
			}
			for entity, want := range c.checkpoints {
				if rv, ok := m.Checkpoint(entity, e.Catalog.SourceSystem); !ok || rv.Text != want {
					t.Errorf("checkpoint of %s: %q (%v), want %s", entity, rv.Text, ok, want)
				}
			}
		})
	}
}

func TestBoundedRelease(t *testing.T) {
	children := func(n, pad int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = storetest.WorkCenter("S1", fmt.Sprintf("WC%05d", i), 1, strings.Repeat("x", pad))
		}
		return out
	}
	const big = 900 << 10 // five of them fit in apply.ReleaseBytes, six do not
	for _, c := range []struct {
		name     string
		children []string
		recheck  bool  // the re-checks after the commit run
		released int64 // by the parent's own transaction
		left     int   // parked when the parent is through
	}{
		{"within the bounds, one transaction releases every child", children(10, 0), false, 10, 0},
		{"more children than a release takes: the rest are due for the sweeper", children(apply.ReleaseLimit+1, 0), false, apply.ReleaseLimit, 1},
		{"more bytes than a release takes: the rest are due for the sweeper", children(6, big), false, 5, 1},
		{"the re-checks after the commit release the rest", children(2*apply.ReleaseLimit+1, 0), true, apply.ReleaseLimit, 0},
		{"the re-checks after the commit release the rest, in bounded chunks", children(11, big), true, 5, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, _ := newEnv(t)
			if res := e.Apply(t, "work_centers", c.children...); res.Counts.Parked != int64(len(c.children)) {
				t.Fatalf("parking: %+v", res.Counts)
			}
			a := e.Applier
			if !c.recheck {
				var err error
				if a, err = apply.NewApplier(storetest.NoRecheck{Store: e.ApplyStore()}, e.Config.Stamp(apply.Config{})); err != nil {
					t.Fatal(err)
				}
			}
			res, err := e.ApplyWith(a, "sites", e.Deliveries("sites", storetest.Site("S1", 1, "")))
			if err != nil {
				t.Fatal(err)
			}
			if res.Counts.Released != c.released {
				t.Errorf("the parent's transaction released %d, want %d", res.Counts.Released, c.released)
			}
			left := e.ParkedRows(t)
			if len(left) != c.left {
				t.Fatalf("%d left parked, want %d", len(left), c.left)
			}
			for _, p := range left {
				if !p.Due {
					t.Errorf("%s is left for its next re-check in %v; want it due now", p, p.Wait())
				}
			}
			applied := len(c.children) - c.left
			if got := len(e.TargetRows(t, "work_centers", "work_center_no")); got != applied {
				t.Errorf("%d work centers applied, want %d", got, applied)
			}
			if got := e.Committed(t).Released; got != int64(applied) {
				t.Errorf("released counted %d, want %d", got, applied)
			}
			if c.left > 0 {
				if sw := e.Sweep(t, deadletterDue); sw.Released != c.left {
					t.Errorf("the sweep released %d, want %d", sw.Released, c.left)
				}
				if n := len(e.ParkedRows(t)); n != 0 {
					t.Errorf("%d still parked after the sweep", n)
				}
			}
		})
	}
}

// askCounter counts the parents each re-check question asks of.
type askCounter struct {
	apply.Store
	asked []int
}

func (c *askCounter) Releasable(ctx context.Context, parents []apply.Key) ([]apply.Key, error) {
	c.asked = append(c.asked, len(parents))
	return c.Store.Releasable(ctx, parents)
}

// The re-checks of a mass release ask, each round, of the parents of what the
// round before applied and of the parents still waited for: a key with nothing
// waiting drops out, whatever the number of rounds.
func TestRecheckAsksOfWaitingParentsOnly(t *testing.T) {
	e, _ := newEnv(t)
	n := 4*apply.ReleaseLimit + 1
	children := make([]string, n)
	for i := range children {
		children[i] = storetest.WorkCenter("S1", fmt.Sprintf("WC%05d", i), 1, "")
	}
	e.Apply(t, "work_centers", children...)
	counter := &askCounter{Store: e.ApplyStore()}
	a, err := apply.NewApplier(counter, e.Config.Stamp(apply.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.ApplyWith(a, "sites", e.Deliveries("sites", storetest.Site("S1", 1, ""))); err != nil {
		t.Fatal(err)
	}
	if left := e.ParkedRows(t); len(left) != 0 {
		t.Fatalf("%d left parked", len(left))
	}
	if got := len(e.TargetRows(t, "work_centers", "work_center_no")); got != n {
		t.Fatalf("%d work centers applied, want %d", got, n)
	}
	// Rounds: the site and the 1,000 work centers of its own release; then,
	// four times, the site and the work centers the round before released.
	if len(counter.asked) != 5 {
		t.Errorf("%d questions, want 5: %v", len(counter.asked), counter.asked)
	}
	for i, k := range counter.asked {
		if k > apply.ReleaseLimit+1 {
			t.Errorf("question %d asked of %d parents, want at most %d: %v", i, k, apply.ReleaseLimit+1, counter.asked)
		}
	}
}
