package store_test

import (
	"bytes"
	"io/fs"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/testenv"
	"github.com/syncflow/syncflow/streams"
)

// In the hour a DST fall-back repeats, a later change of an item gets a lower
// objversion (the ERP's wall clock went back). Read in the catalog's source time
// zone, with the publish times telling the two readings of a wall clock apart,
// the later change wins; read as UTC it is judged stale, and counted as an
// inversion for the alert.
func TestDSTFallBackInTheSourceTimeZone(t *testing.T) {
	f := newFixture(t)
	shipped, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	zoned, err := catalog.Parse(bytes.Replace(shipped, []byte("source_time_zone: UTC"), []byte("source_time_zone: Europe/Stockholm"), 1))
	if err != nil {
		t.Fatal(err)
	}
	item := func(seq uint64, objversion, desc, published string) pipeline.Delivery {
		at, err := time.Parse(time.RFC3339, published)
		if err != nil {
			t.Fatal(err)
		}
		return pipeline.Delivery{Subject: "apismith.cdc.items", Source: event.Realtime, StreamSeq: seq, Published: at,
			Data: []byte(`{"entity":"items","op":"upsert","rowversion":"` + objversion + `","data":{"PART_NO":"P1","DESCRIPTION":"` + desc + `"}}`)}
	}
	apply := func(cat *catalog.Catalog, d pipeline.Delivery) apply.Result {
		t.Helper()
		e, _ := cat.Entity("items")
		ds := []pipeline.Delivery{d}
		res, err := f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: cat, BatchUID: f.batch, NewBatch: f.fresh, Source: event.Realtime,
			Replica: "test", Deliveries: ds, Prepared: pipeline.Preparer{Catalog: cat}.Prepare(ds)})
		if err != nil {
			t.Fatal(err)
		}
		f.fresh = false
		return res
	}
	// 02:50 CEST (00:50 UTC), then 02:10 CET (01:10 UTC), twenty minutes later.
	first, second := item(1, "20261025025000", "first", "2026-10-25T00:50:02Z"), item(2, "20261025021000", "second", "2026-10-25T01:10:01Z")
	apply(zoned, first)
	if res := apply(zoned, second); res.Counts.Updated != 1 || res.Inverted["items"] != 0 {
		t.Fatalf("in the source zone: %+v inverted %v", res.Counts, res.Inverted)
	}
	if got := f.rows(`SELECT description FROM schedulehub.items`); got != "second" {
		t.Fatalf("target %q, want the later change", got)
	}
	f.truncate()
	shippedCat, _ := testenv.Shipped(t)
	apply(shippedCat, first)
	if res := apply(shippedCat, second); res.Counts.Stale != 1 || res.Inverted["items"] != 1 {
		t.Fatalf("read as UTC: %+v inverted %v", res.Counts, res.Inverted)
	}
}
