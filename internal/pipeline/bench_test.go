package pipeline_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/normalize"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/testenv"
)

// The per-event CPU of the pure stages, on realistic events: a work order
// operation of about 1 KiB as APISmith publishes it, through the shipped
// catalog. `make microbench` runs them with -benchmem; docs/benchmarks.md keeps
// the figures.

func operation(i int) []byte {
	return []byte(fmt.Sprintf(`{"entity":"work_order_operations","op":"upsert","rowversion":"2026-11-26T08:%02d:%02dZ",`+
		`"data":{"ORDER_NO":"WO-%07d","OPERATION_NO":%d,"CONTRACT":"S1","WORK_CENTER_NO":"WC-%03d",`+
		`"DESCRIPTION":"  Drill and deburr the housing flange, then inspect  ","OP_START_DATE":"2026-12-01T06:00:00Z",`+
		`"OP_FINISH_DATE":"2026-12-01T14:30:00Z","MACH_RUN_FACTOR":"1.25","LABOR_RUN_FACTOR":"0.75","OP_SEQUENCE":"%d",`+
		`"NOTE_TEXT":"Use fixture F-12; torque 35 Nm; check flatness 0.05 mm across the flange face before release to the next work center in line",`+
		`"OBJSTATE":"Released","OBJVERSION":"20261126080000","EFFICIENCY_FACTOR":"100","MOVE_TIME":"0.5","QUEUE_TIME":"1.5"}}`,
		i%60, i%60, i, i%10*10+10, i%200, i%10))
}

func shipped(b *testing.B) (*catalog.Catalog, *catalog.Entity, *mapping.Set) {
	b.Helper()
	cat, _ := testenv.Shipped(b)
	e, _ := cat.Entity("work_order_operations")
	rules, err := mapping.Compile(nil)
	if err != nil {
		b.Fatal(err)
	}
	return cat, e, rules
}

func BenchmarkDecode(b *testing.B) {
	body := operation(1)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := event.Decode(body, "work_order_operations"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNormalize(b *testing.B) {
	cat, e, _ := shipped(b)
	ev, err := event.Decode(operation(1), "work_order_operations")
	if err != nil {
		b.Fatal(err)
	}
	published := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := normalize.Normalize(ev, e, cat.SourceSystem, published); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMap(b *testing.B) {
	cat, e, rules := shipped(b)
	ev, _ := event.Decode(operation(1), "work_order_operations")
	rec, err := normalize.Normalize(ev, e, cat.SourceSystem, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rules.Apply(rec, e.Key, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRowJSON(b *testing.B) {
	cat, e, rules := shipped(b)
	ev, _ := event.Decode(operation(1), "work_order_operations")
	rec, _ := normalize.Normalize(ev, e, cat.SourceSystem, time.Now())
	row, err := rules.Apply(rec, e.Key, false)
	if err != nil {
		b.Fatal(err)
	}
	var enc pipeline.SortedRowJSON
	b.ReportAllocs()
	for b.Loop() {
		if _, err = enc.Encode(row); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPrepare is the whole pure part of a batch of 500 events: decode,
// normalize, map, hash and collapse; reported per event.
func BenchmarkPrepare(b *testing.B) {
	cat, _, rules := shipped(b)
	ds := make([]pipeline.Delivery, 500)
	for i := range ds {
		ds[i] = pipeline.Delivery{Subject: "apismith.cdc.work_order_operations", Source: event.Realtime, StreamSeq: uint64(i + 1), Data: operation(i)}
	}
	p := pipeline.Preparer{Catalog: cat, Rules: rules}
	b.ReportAllocs()
	for b.Loop() {
		if got := p.Prepare(ds); len(got.Failures) > 0 {
			b.Fatal(got.Failures[0].Err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ds)), "ns/event")
}

// BenchmarkDecide compares a batch of 500 candidates with the ledger's
// versions: half new keys, half older versions of keys already applied.
func BenchmarkDecide(b *testing.B) {
	cat, _, rules := shipped(b)
	ds := make([]pipeline.Delivery, 500)
	for i := range ds {
		ds[i] = pipeline.Delivery{Subject: "apismith.cdc.work_order_operations", Source: event.Realtime, StreamSeq: uint64(i + 1), Data: operation(i)}
	}
	prepared := pipeline.Preparer{Catalog: cat, Rules: rules}.Prepare(ds)
	applied := map[string]pipeline.Applied{}
	for i, c := range prepared.Candidates {
		if i%2 == 0 {
			applied[c.Record.BKHash] = pipeline.Applied{Version: pipeline.Version{Ord: c.Version.Ord - 1, Source: event.Realtime, Seq: 1}}
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		pipeline.Decide(prepared.Candidates, applied)
	}
}
