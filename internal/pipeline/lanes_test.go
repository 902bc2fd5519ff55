package pipeline

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
)

// Split keeps every version of a key in one lane, loses and repeats no
// delivery, and hands each lane what preparing its deliveries alone gives: the
// same candidates, superseded deliveries and failures, indexed within the lane.
// Random batches of a few keys with versions out of order, duplicates and
// every kind of failure, split two to five ways.
func TestSplitKeepsKeysTogether(t *testing.T) {
	p := preparer(t, mapping.Rule{Entity: "sites", SourceField: "DESCRIPTION", TargetField: "description", IsRequired: true})
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		var ds []Delivery
		keyOf := map[int]string{} // by delivery, for those with a key
		for i := range 1 + rng.IntN(60) {
			seq := uint64(i + 1)
			switch x := rng.IntN(20); {
			case x == 0:
				ds = append(ds, Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: seq, Data: []byte(`nope`)})
			case x == 1:
				ds = append(ds, site(seq, "upsert", "S1", "2026-01-01T00:00:00Z", "")) // fails mapping
			default:
				k := fmt.Sprintf("S%d", rng.IntN(8))
				keyOf[len(ds)] = k
				ds = append(ds, site(seq, "upsert", k, fmt.Sprintf("2026-01-01T00:00:%02dZ", rng.IntN(5)), fmt.Sprint("d", rng.IntN(3))))
			}
		}
		whole := p.Prepare(ds)
		n := 2 + round%4
		lanes := whole.Split(ds, n)
		if len(lanes) > n {
			t.Fatalf("round %d: %d lanes of %d", round, len(lanes), n)
		}
		var seen []int
		laneOfKey := map[string]int{}
		var sum Prepared
		for li, l := range lanes {
			if len(l.Deliveries) == 0 || len(l.Indexes) != len(l.Deliveries) {
				t.Fatalf("round %d lane %d: %d deliveries, %d indexes", round, li, len(l.Deliveries), len(l.Indexes))
			}
			for j, i := range l.Indexes {
				seen = append(seen, i)
				if string(l.Deliveries[j].Data) != string(ds[i].Data) || l.Deliveries[j].StreamSeq != ds[i].StreamSeq {
					t.Fatalf("round %d lane %d: delivery %d is not the batch's %d", round, li, j, i)
				}
				if k, ok := keyOf[i]; ok {
					if prev, ok := laneOfKey[k]; ok && prev != li {
						t.Fatalf("round %d: key %s in lanes %d and %d", round, k, prev, li)
					}
					laneOfKey[k] = li
				}
			}
			alone := p.Prepare(l.Deliveries)
			if got, want := summary(l.Prepared), summary(alone); got != want {
				t.Fatalf("round %d lane %d:\n split   %s\n alone   %s", round, li, got, want)
			}
			sum.Candidates = append(sum.Candidates, l.Prepared.Candidates...)
			sum.Superseded = append(sum.Superseded, l.Prepared.Superseded...)
			sum.Failures = append(sum.Failures, l.Prepared.Failures...)
			sum.Normalized += l.Prepared.Normalized
			sum.Mapped += l.Prepared.Mapped
			sum.Inverted += l.Prepared.Inverted
		}
		slices.Sort(seen)
		if !slices.Equal(seen, seq(len(ds))) {
			t.Fatalf("round %d: deliveries across the lanes %v, want each of %d once", round, seen, len(ds))
		}
		if len(sum.Candidates) != len(whole.Candidates) || len(sum.Superseded) != len(whole.Superseded) || len(sum.Failures) != len(whole.Failures) ||
			sum.Normalized != whole.Normalized || sum.Mapped != whole.Mapped || sum.Inverted != whole.Inverted {
			t.Fatalf("round %d: the lanes add up to %s, the batch is %s", round, summary(sum), summary(whole))
		}
	}
}

// summary is what a prepared batch holds, in a comparable form.
func summary(p Prepared) string {
	var cs []string
	for _, c := range p.Candidates {
		cs = append(cs, fmt.Sprintf("%d:%s@%d", c.Index, c.Record.BKHash[:6], c.Version.Ord))
	}
	var fs []string
	for _, f := range p.Failures {
		fs = append(fs, fmt.Sprintf("%d:%s", f.Index, f.Stage))
	}
	sup := slices.Sorted(slices.Values(p.Superseded))
	return fmt.Sprintf("candidates %v superseded %v failures %v normalized %d mapped %d inverted %d", cs, sup, fs, p.Normalized, p.Mapped, p.Inverted)
}

// A batch of one key, or split one way, stays whole.
func TestSplitOneLane(t *testing.T) {
	p := preparer(t)
	ds := []Delivery{site(1, "upsert", "S1", "2026-01-01T00:00:00Z", "a"), site(2, "upsert", "S1", "2026-01-01T00:00:01Z", "b")}
	for _, n := range []int{1, 4} {
		if lanes := p.Prepare(ds).Split(ds, n); len(lanes) != 1 || len(lanes[0].Deliveries) != 2 {
			t.Errorf("split %d ways: %d lanes", n, len(lanes))
		}
	}
}
