package apply_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/storetest"
)

// deadLetters writes the dead letters as "stage entity key", key read from the
// event.
func deadLetters(t *testing.T, e *storetest.Env) []string {
	t.Helper()
	var out []string
	for _, d := range e.DeadLetterRows(t) {
		out = append(out, fmt.Sprintf("%s %s %s", d.Stage, d.Entity, strings.Join(storetest.KeyOf(e.Catalog, d.Entity, d.Raw), " ")))
	}
	return out
}

func sites(descs ...string) []string {
	out := make([]string, len(descs))
	for i, d := range descs {
		out[i] = storetest.Site(fmt.Sprintf("S%d", i+1), 1, d)
	}
	return out
}

var errUnknown = errors.New("an error of no known kind")

func TestIsolation(t *testing.T) {
	rejectBad := func(entity string) func(*testing.T, *storetest.Env, *storetest.Memory) {
		return func(t *testing.T, e *storetest.Env, _ *storetest.Memory) {
			e.RejectTargetRow(t, entity, "description", "bad")
		}
	}
	failParking := func(order string, err error) func(*testing.T, *storetest.Env, *storetest.Memory) {
		return func(_ *testing.T, _ *storetest.Env, m *storetest.Memory) { m.FailParking(storetest.Hash(order), err) }
	}
	orders := []string{storetest.WorkOrder("WO1", "S1", "P1", 1, ""), storetest.WorkOrder("WO2", "S1", "P1", 1, ""),
		storetest.WorkOrder("WO3", "S1", "P1", 1, "")}
	for _, c := range []struct {
		name     string
		arrange  func(*testing.T, *storetest.Env, *storetest.Memory)
		timeouts bool // the batch kept timing out
		entity   string
		events   []string
		outcomes []pipeline.Outcome
		err      error // the kind of error the batch fails with; nil: it commits
		dead     []string
		parked   int // children parked in the end
	}{
		{name: "a row the target rejects is bisected out, the rest commits", arrange: rejectBad("sites"),
			entity: "sites", events: sites("a", "b", "c", "d", "e", "bad", "g", "h"),
			outcomes: []pipeline.Outcome{I, I, I, I, I, F, I, I}, dead: []string{"write sites S6"}},
		{name: "rows the target rejects at either end", arrange: rejectBad("sites"),
			entity: "sites", events: sites("bad", "b", "c", "d", "e", "f", "g", "bad"),
			outcomes: []pipeline.Outcome{F, I, I, I, I, I, I, F}, dead: []string{"write sites S1", "write sites S8"}},
		{name: "every row rejected", arrange: rejectBad("sites"),
			entity: "sites", events: sites("bad", "bad", "bad"),
			outcomes: []pipeline.Outcome{F, F, F}, dead: []string{"write sites S1", "write sites S2", "write sites S3"}},
		{name: "a released child the target rejects fails alone, and its parent commits",
			arrange: func(t *testing.T, e *storetest.Env, _ *storetest.Memory) {
				e.Apply(t, "work_centers", storetest.WorkCenter("S1", "WC1", 1, "ok"), storetest.WorkCenter("S1", "WC2", 1, "bad"))
				e.RejectTargetRow(t, "work_centers", "description", "bad")
			},
			entity: "sites", events: sites("plant"), outcomes: []pipeline.Outcome{I}, dead: []string{"write work_centers S1 WC2"}},
		{name: "a released child the bridge refuses to park again fails alone, taken out of the queue; its parent commits",
			arrange: func(t *testing.T, e *storetest.Env, m *storetest.Memory) {
				e.Apply(t, "work_orders", orders[0])
				m.FailParking(storetest.Hash("WO1"), fmt.Errorf("%w: a check constraint", apply.ErrRowRejected))
			},
			entity: "sites", events: sites("plant", "depot"), outcomes: []pipeline.Outcome{I, I}, dead: []string{"write work_orders WO1"},
			parked: 0},
		{name: "a child the bridge refuses to park: the batch is written again, record by record",
			arrange: failParking("WO2", fmt.Errorf("%w: a check constraint", apply.ErrRowRejected)),
			entity:  "work_orders", events: orders, outcomes: []pipeline.Outcome{P, F, P}, dead: []string{"write work_orders WO2"}, parked: 2},
		{name: "an error of no known kind is the database's: nothing commits", arrange: failParking("WO2", errUnknown),
			entity: "work_orders", events: orders, err: errUnknown},
		{name: "a conflict is the database's: nothing commits", arrange: failParking("WO2", fmt.Errorf("%w: deadlock", apply.ErrConflict)),
			entity: "work_orders", events: orders, err: apply.ErrConflict},
		{name: "an unavailable database: nothing commits", arrange: failParking("WO2", fmt.Errorf("%w: read-only", apply.ErrUnavailable)),
			entity: "work_orders", events: orders, err: apply.ErrUnavailable},
		{name: "a timeout is the database's: nothing commits", arrange: failParking("WO2", fmt.Errorf("%w: statement timeout", apply.ErrTimeout)),
			entity: "work_orders", events: orders, err: apply.ErrTimeout},
		{name: "in a batch that kept timing out, the record that times out fails alone",
			arrange: failParking("WO2", fmt.Errorf("%w: statement timeout", apply.ErrTimeout)), timeouts: true,
			entity: "work_orders", events: orders, outcomes: []pipeline.Outcome{P, F, P}, dead: []string{"write work_orders WO2"}, parked: 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, m := newEnv(t)
			c.arrange(t, e, m)
			before := e.Committed(t)
			e.IsolateTimeouts = c.timeouts
			res, err := e.TryApply(c.entity, e.Deliveries(c.entity, c.events...))
			if c.err != nil {
				if !errors.Is(err, c.err) || errors.Is(err, apply.ErrRowRejected) {
					t.Fatalf("error %v, want %v", err, c.err)
				}
				if n := len(e.LedgerRows(t)) + len(e.ParkedRows(t)) + len(e.DeadLetterRows(t)); n != 0 || e.Committed(t) != before {
					t.Fatalf("the failed batch left %d rows and counts %+v", n, e.Committed(t))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Outcomes, c.outcomes) {
				t.Errorf("outcomes %v, want %v", res.Outcomes, c.outcomes)
			}
			if got := deadLetters(t, e); !slices.Equal(got, c.dead) {
				t.Errorf("dead letters %v, want %v", got, c.dead)
			}
			// Nothing of a failed row is written; everything else is.
			for i, o := range res.Outcomes {
				key := storetest.KeyOf(e.Catalog, c.entity, []byte(c.events[i]))
				if w := written(t, e, c.entity, key...); w != (o == I) {
					t.Errorf("%s %v (%s): written %v", c.entity, key, o, w)
				}
			}
			if n := len(e.ParkedRows(t)); n != c.parked {
				t.Errorf("%d parked, want %d", n, c.parked)
			}
			if !res.Counts.Balanced() || res.Counts.Failed != int64(strings.Count(fmt.Sprint(res.Outcomes), "failed")) {
				t.Errorf("counts %+v", res.Counts)
			}
		})
	}
}

// An update whose ledger row loses at the write (another transaction committed a
// newer version after the lock) is stale: its target row, written in the same
// statement, is undone, and the rest of the batch is written.
func TestAnUpdateOutrunAtTheWrite(t *testing.T) {
	e, m := newEnv(t)
	e.Apply(t, "sites", storetest.Site("S1", 1, "a"), storetest.Site("S2", 1, "a"), storetest.Site("S3", 1, "a"))
	m.Outrun(storetest.Hash("S2"))
	res := e.Apply(t, "sites", storetest.Site("S1", 2, "b"), storetest.Site("S2", 2, "b"), storetest.Site("S3", 2, "b"))
	if want := []pipeline.Outcome{U, S, U}; !slices.Equal(res.Outcomes, want) {
		t.Errorf("outcomes %v, want %v", res.Outcomes, want)
	}
	if got, want := e.TargetRows(t, "sites", "contract", "description"), []string{"S1|b", "S2|a", "S3|b"}; !slices.Equal(got, want) {
		t.Errorf("target %v, want %v", got, want)
	}
	var ledger []string
	for _, r := range e.LedgerRows(t) {
		ledger = append(ledger, r.String())
	}
	slices.Sort(ledger)
	if !slices.Equal(ledger, []string{`sites ["S1"] 2026-01-01T00:00:02Z realtime#4`, `sites ["S2"] 2026-01-01T00:00:01Z realtime#2`, `sites ["S3"] 2026-01-01T00:00:02Z realtime#6`}) {
		t.Errorf("ledger %v", ledger)
	}
	if !res.Counts.Balanced() || res.Counts.Updated != 2 || res.Counts.Stale != 1 {
		t.Errorf("counts %+v", res.Counts)
	}
}
