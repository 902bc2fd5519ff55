package deadletter_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/storetest"
)

type retry struct {
	wait   time.Duration // the clock moves first
	sel    deadletter.Selection
	broken bool  // the mapping rules are still broken
	err    error // the kind of error the run fails with
	want   deadletter.RetryResult
}

var (
	dueLetters = deadletter.Selection{Due: true}
	every      = deadletter.Selection{}
)

// brokenRules fail every site and work order at stage mapping: a description or
// a status is not an integer.
func brokenRules(t *testing.T) *mapping.Set {
	t.Helper()
	rules, err := mapping.Compile([]mapping.Rule{
		{Entity: "sites", SourceField: "DESCRIPTION", TargetField: "description", Transformation: "integer"},
		{Entity: "work_orders", SourceField: "STATUS", TargetField: "status", Transformation: "integer"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

var errUnknown = errors.New("an error of no known kind")

func TestRetry(t *testing.T) {
	// failing applies events while the rules are broken: each becomes a dead letter
	// at stage mapping, retried after an hour.
	failing := func(entity string, events ...string) func(*testing.T, *env) {
		return func(t *testing.T, e *env) {
			e.Rules = brokenRules(t)
			if res := e.Apply(t, entity, events...); res.Counts.Failed != int64(len(events)) {
				t.Fatalf("%+v", res.Counts)
			}
			e.Rules = nil
		}
	}
	then := func(fs ...func(*testing.T, *env)) func(*testing.T, *env) {
		return func(t *testing.T, e *env) {
			for _, f := range fs {
				f(t, e)
			}
		}
	}
	applied := func(entity string, events ...string) func(*testing.T, *env) {
		return func(t *testing.T, e *env) { e.Apply(t, entity, events...) }
	}
	s1 := storetest.Site("S1", 1, "one")
	orders := []string{storetest.WorkOrder("WO1", "S1", "P1", 1, "a"), storetest.WorkOrder("WO2", "S1", "P1", 1, "b"),
		storetest.WorkOrder("WO3", "S1", "P1", 1, "c")}
	bigSites := make([]string, 6)
	for i := range bigSites {
		bigSites[i] = storetest.Site(fmt.Sprintf("S%d", i+1), 1, strings.Repeat("x", big))
	}
	for _, c := range []struct {
		name    string
		tune    func(*deadletter.Config)
		arrange func(*testing.T, *env)
		retries []retry
		dead    []string
		parked  []string
	}{
		{name: "a record that applies now is resolved, when it is due",
			arrange: failing("sites", s1),
			retries: []retry{
				{wait: 59 * time.Minute, sel: dueLetters},
				{wait: time.Minute, sel: dueLetters, want: deadletter.RetryResult{Retried: 1, Resolved: 1}},
			},
			dead: []string{"mapping sites S1, retried 0, 1 earlier, resolved: retried: inserted"}},
		{name: "a record applied since by another message is resolved as unchanged",
			arrange: then(failing("sites", s1), applied("sites", s1)),
			retries: []retry{{wait: time.Hour, sel: dueLetters, want: deadletter.RetryResult{Retried: 1, Resolved: 1}}},
			dead:    []string{"mapping sites S1, retried 0, 1 earlier, resolved: retried: unchanged"}},
		{name: "a record superseded since is resolved as stale",
			arrange: then(failing("sites", s1), applied("sites", storetest.Site("S1", 2, "two"))),
			retries: []retry{{wait: time.Hour, sel: dueLetters, want: deadletter.RetryResult{Retried: 1, Resolved: 1}}},
			dead:    []string{"mapping sites S1, retried 0, 1 earlier, resolved: retried: stale"}},
		{name: "a record whose parent is missing is parked, and resolved",
			arrange: failing("work_orders", orders[0]),
			retries: []retry{{wait: time.Hour, sel: dueLetters, want: deadletter.RetryResult{Retried: 1, Resolved: 1}}},
			dead:    []string{"mapping work_orders WO1, retried 0, 1 earlier, resolved: retried: parked"},
			parked:  []string{`work_orders WO1 -> sites ["S1"], re-checked 0, next in 1h0m0s`}},
		{name: "failing again keeps the history and waits twice as long",
			arrange: failing("sites", s1),
			retries: []retry{{wait: time.Hour, sel: dueLetters, broken: true, want: deadletter.RetryResult{Retried: 1, FailedAgain: 1}}},
			dead:    []string{"mapping sites S1, retried 1, 1 earlier, next in 2h0m0s"}},
		{name: "after its last retry, a record waits for a person",
			arrange: failing("sites", s1),
			retries: []retry{
				{wait: time.Hour, sel: dueLetters, broken: true, want: deadletter.RetryResult{Retried: 1, FailedAgain: 1}},
				{wait: 2 * time.Hour, sel: dueLetters, broken: true, want: deadletter.RetryResult{Retried: 1, FailedAgain: 1}},
				{wait: 4 * time.Hour, sel: dueLetters, broken: true, want: deadletter.RetryResult{Retried: 1, FailedAgain: 1}},
				{wait: 8 * time.Hour, sel: dueLetters, broken: true},
			},
			dead: []string{"mapping sites S1, retried 3, 3 earlier, by hand"}},
		{name: "a person retries it still, and it resolves",
			arrange: failing("sites", s1),
			retries: []retry{
				{wait: time.Hour, sel: dueLetters, broken: true, want: deadletter.RetryResult{Retried: 1, FailedAgain: 1}},
				{sel: every, broken: true, want: deadletter.RetryResult{Retried: 1, FailedAgain: 1}},
				{sel: every, broken: true, want: deadletter.RetryResult{Retried: 1, FailedAgain: 1}},
				{sel: every, want: deadletter.RetryResult{Retried: 1, Resolved: 1}},
			},
			dead: []string{"mapping sites S1, retried 3, 4 earlier, resolved: retried: inserted"}},
		{name: "a stage not retried by itself waits for a person",
			arrange: applied("sites", `{"entity":"sites","op":"upsert","rowversion":"soon","data":{"CONTRACT":"S1"}}`),
			retries: []retry{
				{wait: 24 * time.Hour, sel: dueLetters},
				{sel: every, want: deadletter.RetryResult{Retried: 1, FailedAgain: 1}},
			},
			dead: []string{"normalization sites, retried 1, 1 earlier, by hand"}},
		{name: "an orphan retried by hand while its parent is missing is parked again, and resolved",
			arrange: func(t *testing.T, e *env) {
				e.Apply(t, "work_centers", storetest.WorkCenter("S1", "WC1", 1, ""))
				e.Sweep(t, expire)
			},
			retries: []retry{{sel: deadletter.Selection{Stage: "orphan"}, want: deadletter.RetryResult{Retried: 1, Resolved: 1}}},
			dead:    []string{"orphan work_centers S1 WC1, retried 0, 1 earlier, resolved: retried: parked"},
			parked:  []string{`work_centers S1 WC1 -> sites ["S1"], re-checked 0, next in 1h0m0s`}},
		{name: "one record failing in an unforeseen way fails again alone; the others are resolved",
			arrange: then(failing("work_orders", orders...), func(_ *testing.T, e *env) { e.mem.FailParking(storetest.Hash("WO2"), errUnknown) }),
			retries: []retry{{wait: time.Hour, sel: dueLetters, want: deadletter.RetryResult{Retried: 3, Resolved: 2, FailedAgain: 1}}},
			dead: []string{"mapping work_orders WO1, retried 0, 1 earlier, resolved: retried: parked",
				"write work_orders WO2, retried 1, 1 earlier, next in 2h0m0s",
				"mapping work_orders WO3, retried 0, 1 earlier, resolved: retried: parked"},
			parked: []string{`work_orders WO1 -> sites ["S1"], re-checked 0, next in 1h0m0s`,
				`work_orders WO3 -> sites ["S1"], re-checked 0, next in 1h0m0s`}},
		{name: "a conflict holds every record for the next round",
			arrange: then(failing("work_orders", orders...),
				func(_ *testing.T, e *env) {
					e.mem.FailParking(storetest.Hash("WO2"), fmt.Errorf("%w: deadlock", apply.ErrConflict))
				}),
			retries: []retry{{wait: time.Hour, sel: dueLetters, err: apply.ErrConflict}},
			dead: []string{"mapping work_orders WO1, retried 0, 0 earlier, next in 0s",
				"mapping work_orders WO2, retried 0, 0 earlier, next in 0s",
				"mapping work_orders WO3, retried 0, 0 earlier, next in 0s"}},
		{name: "a run takes RoundLimit records and says there is more",
			tune:    func(c *deadletter.Config) { c.RoundLimit = 2 },
			arrange: failing("sites", storetest.Site("S1", 1, "a"), storetest.Site("S2", 1, "b"), storetest.Site("S3", 1, "c")),
			retries: []retry{
				{wait: time.Hour, sel: dueLetters, want: deadletter.RetryResult{Retried: 2, Resolved: 2, More: true}},
				{sel: dueLetters, want: deadletter.RetryResult{Retried: 1, Resolved: 1}},
			}},
		{name: "a run holds about ReleaseBytes of events and says there is more",
			arrange: failing("sites", bigSites...),
			retries: []retry{
				{wait: time.Hour, sel: dueLetters, want: deadletter.RetryResult{Retried: 5, Resolved: 5, More: true}},
				{sel: dueLetters, want: deadletter.RetryResult{Retried: 1, Resolved: 1}},
			}},
		{name: "a person chooses by entity",
			arrange: then(failing("sites", s1), failing("work_orders", orders[0])),
			retries: []retry{{sel: deadletter.Selection{Entity: "work_orders"}, want: deadletter.RetryResult{Retried: 1, Resolved: 1}}},
			dead: []string{"mapping sites S1, retried 0, 0 earlier, next in 1h0m0s",
				"mapping work_orders WO1, retried 0, 1 earlier, resolved: retried: parked"},
			parked: []string{`work_orders WO1 -> sites ["S1"], re-checked 0, next in 1h0m0s`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, c.tune)
			c.arrange(t, e)
			for i, r := range c.retries {
				e.wait(r.wait)
				e.Rules = nil
				if r.broken {
					e.Rules = brokenRules(t)
				}
				got, err := e.DeadLetters.Retry(e.Ctx, e.Catalog, e.Rules, "test", r.sel)
				if r.err != nil {
					if !errors.Is(err, r.err) {
						t.Fatalf("retry %d: %v, want %v", i, err, r.err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("retry %d: %v", i, err)
				}
				if got != r.want {
					t.Fatalf("retry %d: %+v, want %+v", i, got, r.want)
				}
				if counts := e.Committed(t); !counts.Balanced() {
					t.Fatalf("retry %d: counts do not add up: %+v", i, counts)
				}
			}
			if c.dead != nil {
				check(t, "dead letters", e.dead(t), c.dead)
			} else {
				for _, d := range e.DeadLetterRows(t) {
					if !d.Resolved {
						t.Errorf("unresolved dead letter %s", d)
					}
				}
			}
			check(t, "parked", e.parked(t), c.parked)
		})
	}
}
