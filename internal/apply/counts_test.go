package apply_test

import (
	"testing"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/storetest"
)

// Every fetched delivery has exactly one outcome: fetched = inserted + updated +
// unchanged + stale + deleted + parked + failed. Released children are counted
// apart, whatever became of them. The batch row holds what the results said.
func TestCounts(t *testing.T) {
	wc := func(key string, rv int, desc string) string { return storetest.WorkCenter("S1", key, rv, desc) }
	type step struct {
		source event.Source
		entity string
		events []string
	}
	realtime := func(entity string, events ...string) step { return step{event.Realtime, entity, events} }
	backfill := func(entity string, events ...string) step { return step{event.Backfill, entity, events} }
	for _, c := range []struct {
		name   string
		before []step
		batch  step
		want   pipeline.Counts
	}{
		{"one of each outcome",
			[]step{realtime("sites", storetest.Site("S1", 1, "")), realtime("work_centers", wc("WC2", 5, "a"), wc("WC3", 5, "a"), wc("WC4", 5, "a"), wc("WC5", 5, "a"))},
			realtime("work_centers",
				"{",                 // failed: not JSON
				wc("WC1", 1, "new"), // inserted
				wc("WC2", 6, "b"),   // updated
				wc("WC3", 6, "a"),   // unchanged: a newer version of the same data
				wc("WC4", 1, "old"), // stale
				storetest.WorkCenterDeleted("S1", "WC5", 6),       // deleted
				storetest.WorkCenter("S9", "WC6", 1, "no parent"), // parked
				wc("WC7", 1, "first"),                             // stale: superseded in the batch
				wc("WC7", 2, "second"),                            // inserted
			),
			pipeline.Counts{Fetched: 9, Normalized: 8, Mapped: 8, Inserted: 2, Updated: 1, Unchanged: 1, Stale: 2, Deleted: 1, Parked: 1, Failed: 1}},
		{"the same data again is unchanged",
			[]step{realtime("sites", storetest.Site("S1", 1, "a"))},
			realtime("sites", storetest.Site("S1", 1, "a")),
			pipeline.Counts{Fetched: 1, Normalized: 1, Mapped: 1, Unchanged: 1}},
		{"a stale upsert does not resurrect a deleted row",
			[]step{realtime("sites", storetest.Site("S1", 1, "a")), realtime("sites", storetest.SiteDeleted("S1", 3))},
			realtime("sites", storetest.Site("S1", 2, "zombie")),
			pipeline.Counts{Fetched: 1, Normalized: 1, Mapped: 1, Stale: 1}},
		{"a realtime event replaces a backfill copy of its rowversion",
			[]step{backfill("sites", storetest.Site("S1", 1, "copy"))},
			realtime("sites", storetest.Site("S1", 1, "live")),
			pipeline.Counts{Fetched: 1, Normalized: 1, Mapped: 1, Updated: 1}},
		{"a backfill copy never replaces a realtime version of its rowversion",
			[]step{realtime("sites", storetest.Site("S1", 1, "live"))},
			backfill("sites", storetest.Site("S1", 1, "copy")),
			pipeline.Counts{Fetched: 1, Normalized: 1, Mapped: 1, Stale: 1}},
		{"released children are counted apart from the batch's deliveries",
			[]step{realtime("work_centers", wc("WC1", 1, ""), wc("WC2", 1, ""))},
			realtime("sites", storetest.Site("S1", 1, "")),
			pipeline.Counts{Fetched: 1, Normalized: 1, Mapped: 1, Inserted: 1, Released: 2}},
		{"released children that wait again are counted released",
			[]step{realtime("work_orders", storetest.WorkOrder("WO1", "S1", "P1", 1, ""))},
			realtime("sites", storetest.Site("S1", 1, "")),
			pipeline.Counts{Fetched: 1, Normalized: 1, Mapped: 1, Inserted: 1, Released: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, _ := newEnv(t)
			var sum pipeline.Counts
			run := func(s step) pipeline.Counts {
				t.Helper()
				e.Source = s.source
				res := e.Apply(t, s.entity, s.events...)
				if !res.Counts.Balanced() {
					t.Fatalf("%s: counts do not add up: %+v", s.entity, res.Counts)
				}
				sum.Merge(res.Counts)
				return res.Counts
			}
			for _, s := range c.before {
				run(s)
			}
			if got := run(c.batch); got != c.want {
				t.Errorf("counts\n%+v\nwant\n%+v", got, c.want)
			}
			if got := e.Committed(t); got != sum {
				t.Errorf("the batch row holds\n%+v\nthe results said\n%+v", got, sum)
			}
		})
	}
}
