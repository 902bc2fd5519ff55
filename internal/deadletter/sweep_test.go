package deadletter_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/storetest"
)

type sweep struct {
	wait time.Duration // the clock moves first
	sel  deadletter.ParkedSelection
	want deadletter.SweepResult
	// parked, when set, is what waits after the sweep.
	parked []string
}

var (
	due    = deadletter.ParkedSelection{}
	all    = deadletter.ParkedSelection{All: true}
	expire = deadletter.ParkedSelection{Expire: true}
)

func workCenters(n, pad int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = storetest.WorkCenter("S1", fmt.Sprintf("WC%d", i+1), 1, strings.Repeat("x", pad))
	}
	return out
}

// big is the size of an event of which four fit in apply.ReleaseBytes, and five
// do not.
const big = 900 << 10

func TestSweep(t *testing.T) {
	wc1 := storetest.WorkCenter("S1", "WC1", 1, "")
	site := storetest.Site("S1", 1, "")
	wo1 := storetest.WorkOrder("WO1", "S1", "P1", 1, "")
	for _, c := range []struct {
		name    string
		tune    func(*deadletter.Config)
		arrange func(*testing.T, *env)
		sweeps  []sweep
		parked  []string
		dead    []string
		reason  string // in the one dead letter's error
		applied int    // work centers applied in the end
	}{
		{name: "a child whose parent came unnoticed is released",
			arrange: func(t *testing.T, e *env) { e.Apply(t, "work_centers", wc1); e.Unnoticed(t, "sites", site) },
			sweeps:  []sweep{{time.Hour, due, deadletter.SweepResult{Examined: 1, Released: 1}, nil}},
			applied: 1},
		{name: "a child not yet due is left alone",
			arrange: func(t *testing.T, e *env) { e.Apply(t, "work_centers", wc1) },
			sweeps:  []sweep{{59 * time.Minute, due, deadletter.SweepResult{}, nil}},
			parked:  []string{`work_centers S1 WC1 -> sites ["S1"], re-checked 0, next in 1m0s`}},
		{name: "a child whose parent is missing waits twice as long each time",
			arrange: func(t *testing.T, e *env) { e.Apply(t, "work_centers", wc1) },
			sweeps: []sweep{
				{time.Hour, due, deadletter.SweepResult{Examined: 1, Waiting: 1}, nil},
				{time.Hour, due, deadletter.SweepResult{}, nil},
				{time.Hour, due, deadletter.SweepResult{Examined: 1, Waiting: 1}, nil},
			},
			parked: []string{`work_centers S1 WC1 -> sites ["S1"], re-checked 2, next in 4h0m0s`}},
		{name: "after its last re-check, a child becomes an orphan that names its parent",
			arrange: func(t *testing.T, e *env) { e.Apply(t, "sites", site); e.Apply(t, "work_orders", wo1) },
			sweeps: []sweep{
				{time.Hour, due, deadletter.SweepResult{Examined: 1, Waiting: 1}, nil},
				{2 * time.Hour, due, deadletter.SweepResult{Examined: 1, Waiting: 1}, nil},
				{4 * time.Hour, due, deadletter.SweepResult{Examined: 1, Orphaned: 1}, nil},
			},
			dead: []string{"orphan work_orders WO1, retried 0, 0 earlier, by hand"},
			reason: `parent items ["P1"] was never applied: the child waited since 2026-03-01T12:00:00Z and was re-checked 2 times; ` +
				"the parent's arrival still releases it"},
		{name: "an operator's re-check neither counts nor orphans; the sweeper's does",
			arrange: func(t *testing.T, e *env) { e.Apply(t, "work_centers", wc1); e.SetParkedRetries(t, 2) },
			sweeps: []sweep{
				{0, all, deadletter.SweepResult{Examined: 1, Waiting: 1}, nil},
				{0, all, deadletter.SweepResult{Examined: 1, Waiting: 1}, nil},
				{time.Hour, due, deadletter.SweepResult{Examined: 1, Orphaned: 1}, nil},
			},
			dead: []string{"orphan work_centers S1 WC1, retried 0, 0 earlier, by hand"}},
		{name: "an operator's re-check releases a child whose parent is there",
			arrange: func(t *testing.T, e *env) { e.Apply(t, "work_centers", wc1); e.Unnoticed(t, "sites", site) },
			sweeps:  []sweep{{0, all, deadletter.SweepResult{Examined: 1, Released: 1}, nil}},
			applied: 1},
		{name: "expiring makes orphans now, whatever their budget",
			arrange: func(t *testing.T, e *env) { e.Apply(t, "work_centers", wc1) },
			sweeps:  []sweep{{0, expire, deadletter.SweepResult{Examined: 1, Orphaned: 1}, nil}},
			dead:    []string{"orphan work_centers S1 WC1, retried 0, 0 earlier, by hand"},
			reason:  "re-checked 0 times"},
		{name: "expiring the children older than an hour spares the younger",
			arrange: func(t *testing.T, e *env) { e.Apply(t, "work_centers", wc1) },
			sweeps: []sweep{
				{30 * time.Minute, deadletter.ParkedSelection{Expire: true, OlderThan: time.Hour}, deadletter.SweepResult{}, nil},
				{30 * time.Minute, deadletter.ParkedSelection{Expire: true, OlderThan: time.Hour}, deadletter.SweepResult{Examined: 1, Orphaned: 1}, nil},
			},
			dead: []string{"orphan work_centers S1 WC1, retried 0, 0 earlier, by hand"}},
		{name: "the sweeper's round releases an orphan whose parent came unnoticed",
			arrange: func(t *testing.T, e *env) {
				e.Apply(t, "work_centers", wc1)
				e.Sweep(t, expire)
				e.Unnoticed(t, "sites", site)
			},
			sweeps:  []sweep{{0, due, deadletter.SweepResult{Examined: 1, Released: 1}, nil}},
			dead:    []string{"orphan work_centers S1 WC1, retried 0, 1 earlier, resolved: released: the parent it waited for was applied"},
			applied: 1},
		{name: "an orphan released to wait for its other parent is resolved, and waits afresh",
			arrange: func(t *testing.T, e *env) {
				e.Apply(t, "work_orders", wo1)
				e.Sweep(t, expire)
				e.Unnoticed(t, "sites", site)
			},
			sweeps: []sweep{{0, due, deadletter.SweepResult{Examined: 1, Released: 1}, nil}},
			dead:   []string{"orphan work_orders WO1, retried 0, 1 earlier, resolved: released: the parent it waited for was applied"},
			parked: []string{`work_orders WO1 -> items ["P1"], re-checked 0, next in 1h0m0s`}},
		{name: "the parent's arrival releases an orphan; the sweeper finds nothing",
			arrange: func(t *testing.T, e *env) {
				e.Apply(t, "work_centers", wc1)
				e.Sweep(t, expire)
				if res := e.Apply(t, "sites", site); res.Counts.Released != 1 {
					t.Fatalf("the parent released %d", res.Counts.Released)
				}
			},
			sweeps:  []sweep{{time.Hour, due, deadletter.SweepResult{}, nil}},
			dead:    []string{"orphan work_centers S1 WC1, retried 0, 1 earlier, resolved: released: the parent it waited for was applied"},
			applied: 1},
		{name: "a released child whose other parent is missing waits again, for that one, afresh",
			arrange: func(t *testing.T, e *env) {
				e.Apply(t, "work_orders", wo1)
				e.SetParkedRetries(t, 1)
				e.Unnoticed(t, "sites", site)
			},
			sweeps: []sweep{{time.Hour, due, deadletter.SweepResult{Examined: 1, Waiting: 1}, nil}},
			parked: []string{`work_orders WO1 -> items ["P1"], re-checked 0, next in 1h0m0s`}},
		{name: "expiring a released child that waits again makes it an orphan of its other parent",
			arrange: func(t *testing.T, e *env) { e.Apply(t, "work_orders", wo1); e.Unnoticed(t, "sites", site) },
			sweeps:  []sweep{{0, expire, deadletter.SweepResult{Examined: 1, Orphaned: 1}, nil}},
			dead:    []string{"orphan work_orders WO1, retried 0, 0 earlier, by hand"},
			reason:  `parent items ["P1"] was never applied`},
		{name: "a sweep examines RoundLimit children and says there is more",
			tune:    func(c *deadletter.Config) { c.RoundLimit = 2 },
			arrange: func(t *testing.T, e *env) { e.Apply(t, "work_centers", workCenters(3, 0)...) },
			sweeps: []sweep{
				{time.Hour, due, deadletter.SweepResult{Examined: 2, Waiting: 2, More: true}, nil},
				{0, due, deadletter.SweepResult{Examined: 1, Waiting: 1}, nil},
			},
			parked: []string{`work_centers S1 WC1 -> sites ["S1"], re-checked 1, next in 2h0m0s`,
				`work_centers S1 WC2 -> sites ["S1"], re-checked 1, next in 2h0m0s`,
				`work_centers S1 WC3 -> sites ["S1"], re-checked 1, next in 2h0m0s`}},
		{name: "a release holds at most ReleaseBytes of events; the rest waits for the next sweep, its budget untouched",
			arrange: func(t *testing.T, e *env) {
				e.Apply(t, "work_centers", workCenters(6, big)...)
				e.Unnoticed(t, "sites", site)
			},
			sweeps: []sweep{
				{time.Hour, due, deadletter.SweepResult{Examined: 6, Released: 4, Waiting: 2, More: true}, []string{
					`work_centers S1 WC5 -> sites ["S1"], re-checked 0, next in 0s`,
					`work_centers S1 WC6 -> sites ["S1"], re-checked 0, next in 0s`}},
				{0, due, deadletter.SweepResult{Examined: 2, Released: 2}, nil},
			},
			applied: 6},
		{name: "orphans whose parent came unnoticed are released ReleaseLimit at a time",
			arrange: func(t *testing.T, e *env) {
				e.Apply(t, "work_centers", workCenters(apply.ReleaseLimit+1, 0)...)
				for e.Sweep(t, expire).More {
				}
				e.Unnoticed(t, "sites", site)
			},
			sweeps: []sweep{
				{0, due, deadletter.SweepResult{Examined: apply.ReleaseLimit, Released: apply.ReleaseLimit, More: true}, nil},
				{0, due, deadletter.SweepResult{Examined: 1, Released: 1}, nil},
			},
			applied: apply.ReleaseLimit + 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, c.tune)
			c.arrange(t, e)
			for i, s := range c.sweeps {
				e.wait(s.wait)
				if got := e.Sweep(t, s.sel); got != s.want {
					t.Fatalf("sweep %d: %+v, want %+v", i, got, s.want)
				}
				if counts := e.Committed(t); !counts.Balanced() {
					t.Fatalf("sweep %d: counts do not add up: %+v", i, counts)
				}
				if s.parked != nil {
					check(t, fmt.Sprintf("parked after sweep %d", i), e.parked(t), s.parked)
				}
			}
			check(t, "parked", e.parked(t), c.parked)
			if c.dead != nil {
				check(t, "dead letters", e.dead(t), c.dead)
			}
			for _, d := range e.DeadLetterRows(t) {
				if !d.Resolved && c.dead == nil {
					t.Errorf("unresolved dead letter %s", d)
				}
			}
			if c.reason != "" {
				if d := e.DeadLetterRows(t); len(d) != 1 || !strings.Contains(d[0].Error, c.reason) {
					t.Errorf("dead letters %v, want one whose reason says %q", d, c.reason)
				}
			}
			if got := len(e.TargetRows(t, "work_centers", "work_center_no")); got != c.applied {
				t.Errorf("%d work centers applied, want %d", got, c.applied)
			}
		})
	}
}
