package store

import (
	"fmt"
	"strings"
	"testing"

	"github.com/syncflow/syncflow/internal/catalog"
)

// The upsert statements cached per target are bounded, whatever column subsets
// the events carry; past the bound the statements are still right.
func TestUpsertCacheIsBounded(t *testing.T) {
	e := &catalog.Entity{Name: "wide", Target: catalog.Target{Schema: "s", Table: "wide", Key: []string{"k"}}, Delete: catalog.DeleteHard}
	tg := &target{entity: e, ident: `"s"."wide"`, key: e.Target.Key, upserts: map[string]string{}}
	for i := range 1000 {
		cols := []string{"k", fmt.Sprintf("c%04d", i)}
		q := tg.upsertSQL(cols)
		if !strings.Contains(q, fmt.Sprintf(`"c%04d" = excluded."c%04d"`, i, i)) {
			t.Fatalf("statement for %v: %s", cols, q)
		}
	}
	if len(tg.upserts) != maxCachedUpserts {
		t.Fatalf("%d statements cached, want %d", len(tg.upserts), maxCachedUpserts)
	}
}
