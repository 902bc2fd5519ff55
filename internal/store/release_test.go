package store_test

import (
	"fmt"
	"strings"
	"testing"
)

// A parent with 30,000 waiting children of about 1 KB: its own transaction
// releases a bounded chunk, the re-checks after its commit release the rest in
// chunks of their own, and every child is applied.
func TestMassReleaseIsBounded(t *testing.T) {
	f := newFixture(t)
	pad := strings.Repeat("x", 900)
	const children = 30000
	for start := 0; start < children; start += 3000 {
		var bodies []string
		for i := start; i < start+3000; i++ {
			bodies = append(bodies, fmt.Sprintf(`{"entity":"work_centers","op":"upsert","rowversion":"2026-01-01T00:00:01Z","data":{"CONTRACT":"S1","WORK_CENTER_NO":"WC%05d","DESCRIPTION":%q}}`, i, pad))
		}
		if res := f.apply("work_centers", nil, bodies...); res.Counts.Parked != 3000 {
			t.Fatalf("parking: %+v", res.Counts)
		}
	}
	res := f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:00Z", "site"))
	if res.Counts.Released == 0 || res.Counts.Released > 1000 {
		t.Fatalf("the parent's transaction released %d children, want 1 to 1000", res.Counts.Released)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.pending_children`); got != "0" {
		t.Fatalf("%s children still parked", got)
	}
	if got := f.rows(`SELECT count(*), min(length(description)) FROM schedulehub.work_centers`); got != fmt.Sprintf("%d|900", children) {
		t.Fatalf("work centers: %s", got)
	}
	if got := f.rows(`SELECT sum(rows_released)::int FROM bridge.sync_batches`); got != fmt.Sprint(children) {
		t.Fatalf("released counted: %s", got)
	}
}
