package pipeline

import (
	"fmt"
	"slices"
	"testing"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
)

const cat = `
entities:
  sites:
    key: [CONTRACT]
    target: {table: s.sites, key: [contract]}
`

func preparer(t *testing.T, rules ...mapping.Rule) Preparer {
	t.Helper()
	c, err := catalog.Parse([]byte(cat))
	if err != nil {
		t.Fatal(err)
	}
	set, err := mapping.Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	return Preparer{Catalog: c, Rules: set}
}

func site(seq uint64, op, contract, rv, desc string) Delivery {
	return Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: seq,
		Data: []byte(fmt.Sprintf(`{"entity":"sites","op":%q,"rowversion":%q,"data":{"CONTRACT":%q,"DESCRIPTION":%q}}`, op, rv, contract, desc))}
}

func TestPrepareStages(t *testing.T) {
	p := preparer(t, mapping.Rule{Entity: "sites", SourceField: "DESCRIPTION", TargetField: "description", IsRequired: true})
	ds := []Delivery{
		site(1, "upsert", "S1", "2026-01-01T00:00:00Z", "a"),
		{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: 2, Data: []byte(`nope`)},
		{Subject: "apismith.cdc.plants", Source: event.Realtime, StreamSeq: 3, Data: []byte(`{"entity":"plants","op":"upsert","rowversion":"x","data":{}}`)},
		site(4, "upsert", "", "2026-01-01T00:00:00Z", "a"),
		site(5, "upsert", "S2", "2026-01-01T00:00:00Z", ""),
		{Subject: "apismith.cdc.sites.x", Source: event.Realtime, StreamSeq: 6, Data: site(6, "upsert", "S3", "2026-01-01T00:00:00Z", "a").Data},
	}
	got := p.Prepare(ds)
	stages := map[int]Stage{}
	for _, f := range got.Failures {
		stages[f.Index] = f.Stage
	}
	want := map[int]Stage{1: StageDecode, 2: StageDecode, 3: StageNormalization, 4: StageMapping, 5: StageDecode}
	if fmt.Sprint(stages) != fmt.Sprint(want) {
		t.Errorf("failure stages = %v, want %v", stages, want)
	}
	if len(got.Candidates) != 1 || got.Candidates[0].Index != 0 || got.Candidates[0].Row["description"] != "a" {
		t.Errorf("candidates = %+v", got.Candidates)
	}
	if got.Normalized != 2 || got.Mapped != 1 {
		t.Errorf("normalized, mapped = %d, %d; want 2, 1", got.Normalized, got.Mapped)
	}
	for _, f := range got.Failures {
		if f.Stage == StageMapping && (f.Normalized == nil || f.BKHash == "") {
			t.Errorf("a mapping failure keeps the normalized data: %+v", f)
		}
	}
}

func TestPrepareCollapsesToNewest(t *testing.T) {
	p := preparer(t)
	ds := []Delivery{
		site(1, "upsert", "S1", "2026-01-01T00:00:02Z", "newest by version"),
		site(2, "upsert", "S1", "2026-01-01T00:00:01Z", "older"),
		site(3, "upsert", "S2", "2026-01-01T00:00:01Z", "first"),
		site(4, "upsert", "S2", "2026-01-01T00:00:01Z", "same second, later seq"),
		site(5, "delete", "S3", "2026-01-01T00:00:01Z", ""),
	}
	got := p.Prepare(ds)
	var idx []int
	for _, c := range got.Candidates {
		idx = append(idx, c.Index)
	}
	slices.Sort(got.Superseded)
	if !slices.Equal(idx, []int{0, 3, 4}) || !slices.Equal(got.Superseded, []int{1, 2}) {
		t.Errorf("candidates %v superseded %v; want [0 3 4] and [1 2]", idx, got.Superseded)
	}
	if got.Candidates[2].PayloadHash != nil || got.Candidates[2].Record.Op != event.OpDelete {
		t.Errorf("delete candidate = %+v", got.Candidates[2])
	}
}

func TestSupersedes(t *testing.T) {
	h1, h2 := []byte{1}, []byte{2}
	applied := Version{Ord: 10, Source: event.Realtime, Seq: 5, Hash: h1}
	for _, tt := range []struct {
		in   Version
		want bool
	}{
		{Version{Ord: 11, Source: event.Backfill, Seq: 1, Hash: h1}, true},
		{Version{Ord: 9, Source: event.Realtime, Seq: 99, Hash: h2}, false},
		{Version{Ord: 10, Source: event.Realtime, Seq: 6, Hash: h1}, true},
		{Version{Ord: 10, Source: event.Realtime, Seq: 4, Hash: h2}, false},
		{Version{Ord: 10, Source: event.Backfill, Seq: 99, Hash: h2}, false}, // a backfill copy never replaces a realtime version it ties with
		{Version{Ord: 10, Source: event.Realtime, Seq: 5, Hash: h1}, false},  // the same event again
		{Version{Ord: 10, Source: event.Realtime, Seq: 5, Hash: h2}, true},   // the same event, remapped
	} {
		if got := Supersedes(tt.in, applied); got != tt.want {
			t.Errorf("Supersedes(%+v) = %v, want %v", tt.in, got, tt.want)
		}
	}
	// Applied from the backfill: a realtime event of the same rowversion wins the
	// tie whatever its sequence, a later backfill copy wins by sequence.
	backfilled := Version{Ord: 10, Source: event.Backfill, Seq: 500, Hash: h1}
	for _, tt := range []struct {
		in   Version
		want bool
	}{
		{Version{Ord: 10, Source: event.Realtime, Seq: 1, Hash: h1}, true},
		{Version{Ord: 10, Source: event.Realtime, Seq: 1, Hash: nil}, true}, // a realtime delete of the last rowversion
		{Version{Ord: 10, Source: event.Backfill, Seq: 501, Hash: h2}, true},
		{Version{Ord: 10, Source: event.Backfill, Seq: 499, Hash: h2}, false},
		{Version{Ord: 9, Source: event.Realtime, Seq: 900, Hash: h2}, false},
	} {
		if got := Supersedes(tt.in, backfilled); got != tt.want {
			t.Errorf("Supersedes(%+v, backfill copy) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// Compare is a total order: antisymmetric and transitive over every combination of
// rowversion, stream and sequence, so the winner of a set of versions is the same
// whatever order they are compared in.
func TestCompareIsATotalOrder(t *testing.T) {
	var vs []Version
	for _, ord := range []int64{1, 2} {
		for _, src := range []event.Source{event.Realtime, event.Backfill} {
			for _, seq := range []uint64{1, 2, 3} {
				vs = append(vs, Version{Ord: ord, Source: src, Seq: seq})
			}
		}
	}
	for _, a := range vs {
		for _, b := range vs {
			if Compare(a, b) != -Compare(b, a) {
				t.Fatalf("not antisymmetric: %+v %+v", a, b)
			}
			if (Compare(a, b) == 0) != (a.Ord == b.Ord && a.Source == b.Source && a.Seq == b.Seq) {
				t.Fatalf("distinct versions compare equal: %+v %+v", a, b)
			}
			for _, c := range vs {
				if Compare(a, b) > 0 && Compare(b, c) > 0 && Compare(a, c) <= 0 {
					t.Fatalf("not transitive: %+v > %+v > %+v", a, b, c)
				}
			}
		}
	}
}

func TestDecide(t *testing.T) {
	p := preparer(t)
	h := func(d Delivery) Candidate { return p.Prepare([]Delivery{d}).Candidates[0] }
	base := h(site(5, "upsert", "S1", "2026-01-01T00:00:10Z", "x"))
	live := map[string]Applied{base.Record.BKHash: {Version: base.Version}}
	tomb := map[string]Applied{base.Record.BKHash: {Version: Version{Ord: base.Version.Ord, Source: event.Realtime, Seq: 5}, Deleted: true}}
	tests := []struct {
		name    string
		d       Delivery
		applied map[string]Applied
		want    Outcome
		ledger  bool
		target  bool
	}{
		{"new key", site(5, "upsert", "S1", "2026-01-01T00:00:10Z", "x"), nil, Inserted, true, true},
		{"new key deleted", site(5, "delete", "S1", "2026-01-01T00:00:10Z", ""), nil, Deleted, true, true},
		{"redelivery", site(5, "upsert", "S1", "2026-01-01T00:00:10Z", "x"), live, Unchanged, false, false},
		{"newer, same payload", site(9, "upsert", "S1", "2026-01-01T00:00:11Z", "x"), live, Unchanged, true, true},
		{"newer, new payload", site(9, "upsert", "S1", "2026-01-01T00:00:11Z", "y"), live, Updated, true, true},
		{"same second, later seq", site(6, "upsert", "S1", "2026-01-01T00:00:10Z", "y"), live, Updated, true, true},
		{"older", site(9, "upsert", "S1", "2026-01-01T00:00:09Z", "y"), live, Stale, false, false},
		{"older, same payload", site(9, "upsert", "S1", "2026-01-01T00:00:09Z", "x"), live, Unchanged, false, false},
		{"delete newer", site(9, "delete", "S1", "2026-01-01T00:00:11Z", ""), live, Deleted, true, true},
		{"delete older", site(9, "delete", "S1", "2026-01-01T00:00:09Z", ""), live, Stale, false, false},
		{"stale upsert after delete", site(9, "upsert", "S1", "2026-01-01T00:00:09Z", "x"), tomb, Stale, false, false},
		{"newer upsert after delete", site(9, "upsert", "S1", "2026-01-01T00:00:11Z", "x"), tomb, Inserted, true, true},
		{"delete after delete", site(9, "delete", "S1", "2026-01-01T00:00:11Z", ""), tomb, Unchanged, true, true},
	}
	for _, tt := range tests {
		c := h(tt.d)
		got := Decide([]Candidate{c}, tt.applied)[0]
		if got.Outcome != tt.want || got.Ledger != tt.ledger || got.Target != tt.target {
			t.Errorf("%s: got %s ledger=%v target=%v; want %s ledger=%v target=%v", tt.name, got.Outcome, got.Ledger, got.Target, tt.want, tt.ledger, tt.target)
		}
	}
	// A later realtime event with a lower rowversion is stale, and an inversion;
	// an earlier one is merely stale.
	if got := Decide([]Candidate{h(site(9, "upsert", "S1", "2026-01-01T00:00:09Z", "y"))}, live)[0]; got.Outcome != Stale || !got.Inverted {
		t.Errorf("later and lower: %s inverted=%v, want stale and inverted", got.Outcome, got.Inverted)
	}
	if got := Decide([]Candidate{h(site(4, "upsert", "S1", "2026-01-01T00:00:09Z", "y"))}, live)[0]; got.Inverted {
		t.Errorf("earlier and lower is not an inversion")
	}
	if got := p.Prepare([]Delivery{site(1, "upsert", "S9", "2026-01-01T00:00:10Z", "a"), site(2, "upsert", "S9", "2026-01-01T00:00:05Z", "b")}); got.Inverted != 1 {
		t.Errorf("an inversion within one batch: %d, want 1", got.Inverted)
	}
	bf := site(9, "upsert", "S1", "2026-01-01T00:00:10Z", "y")
	bf.Source = event.Backfill
	if got := Decide([]Candidate{h(bf)}, live)[0]; got.Outcome != Stale {
		t.Errorf("equal version from backfill over realtime: %s, want stale (realtime wins a tie)", got.Outcome)
	}
	// The other way round: a backfill copy was applied first; the realtime change
	// and the realtime delete of the same rowversion both win.
	copied := map[string]Applied{base.Record.BKHash: {Version: Version{Ord: base.Version.Ord, Source: event.Backfill, Seq: 700, Hash: base.Version.Hash}}}
	if got := Decide([]Candidate{h(site(2, "upsert", "S1", "2026-01-01T00:00:10Z", "y"))}, copied)[0]; got.Outcome != Updated || !got.Target {
		t.Errorf("realtime change tying a backfill copy: %s target=%v, want updated", got.Outcome, got.Target)
	}
	if got := Decide([]Candidate{h(site(2, "upsert", "S1", "2026-01-01T00:00:10Z", "x"))}, copied)[0]; got.Outcome != Unchanged || !got.Ledger || !got.Target {
		t.Errorf("realtime event equal to the backfill copy: %s ledger=%v target=%v, want unchanged with the ledger noting realtime (and the row written again)", got.Outcome, got.Ledger, got.Target)
	}
	if got := Decide([]Candidate{h(site(3, "delete", "S1", "2026-01-01T00:00:10Z", ""))}, copied)[0]; got.Outcome != Deleted || !got.Target {
		t.Errorf("realtime delete carrying the last rowversion after a backfill copy: %s, want deleted", got.Outcome)
	}
}

func TestCountsBalanced(t *testing.T) {
	c := Counts{Fetched: 3}
	for _, o := range []Outcome{Inserted, Stale, Failed} {
		c.Add(o)
	}
	if !c.Balanced() {
		t.Errorf("%+v should balance", c)
	}
	c.Add(Updated)
	if c.Balanced() {
		t.Errorf("%+v should not balance", c)
	}
}
