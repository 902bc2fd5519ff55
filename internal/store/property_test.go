package store_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"pgregory.net/rapid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

type histEvent struct {
	source event.Source
	seq    uint64 // stream sequence within its source
	key    string
	op     string
	ord    int // seconds
	desc   string
}

func (e histEvent) body() string {
	rv := fmt.Sprintf("2026-01-01T00:%02d:%02dZ", e.ord/60, e.ord%60)
	return fmt.Sprintf(`{"entity":"sites","op":%q,"rowversion":%q,"data":{"CONTRACT":%q,"DESCRIPTION":%q}}`, e.op, rv, e.key, e.desc)
}

// A random history of upserts and deletes for a few keys, from both streams, with
// rowversions that tie within and across the streams, delivered with duplicates,
// in any order and cut into random batches, ends in the state of a perfect apply:
// per key, the greatest version under pipeline.Compare wins (higher rowversion;
// on a tie realtime beats backfill; within a stream the later sequence). Each
// history is applied in three independent interleavings, which must all end in
// that state: the result does not depend on the order of delivery, nor on a
// batch being split by key into lanes written side by side (consumer Lanes).
func TestPropertyFinalStateMatchesModel(t *testing.T) {
	f := newFixture(t)
	e, _ := f.cat.Entity("sites")
	keys := []string{"A", "B", "C"}
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.IntRange(1, 30).Draw(rt, "events")
		var hist []histEvent
		seqs := map[event.Source]uint64{}
		for range n {
			src := event.Realtime
			if rapid.Bool().Draw(rt, "backfill") {
				src = event.Backfill
			}
			seqs[src]++
			hist = append(hist, histEvent{
				source: src, seq: seqs[src],
				key:  rapid.SampledFrom(keys).Draw(rt, "key"),
				op:   rapid.SampledFrom([]string{"upsert", "upsert", "delete"}).Draw(rt, "op"),
				ord:  rapid.SampledFrom([]int{10, 20, 30}).Draw(rt, "ord"), // ties within and across streams
				desc: rapid.SampledFrom([]string{"x", "y", "z"}).Draw(rt, "desc"),
			})
		}
		// The model: per key, the greatest event under the version order.
		version := func(ev histEvent) pipeline.Version {
			return pipeline.Version{Ord: int64(ev.ord), Source: ev.source, Seq: ev.seq}
		}
		winner := map[string]histEvent{}
		for _, ev := range hist {
			if w, ok := winner[ev.key]; !ok || pipeline.Compare(version(ev), version(w)) > 0 {
				winner[ev.key] = ev
			}
		}
		var wantTarget, wantLedger []string
		for _, k := range keys {
			w, ok := winner[k]
			if !ok {
				continue
			}
			if w.op == "upsert" {
				wantTarget = append(wantTarget, k+"|"+w.desc)
			}
			wantLedger = append(wantLedger, fmt.Sprintf("%s|%d|%s|%d|%v", k, w.ord, w.source.Name, w.seq, w.op == "delete"))
		}
		for _, interleaving := range []string{"first", "second", "in lanes"} {
			f.truncate()
			// Every event at least once, some twice, in a random order.
			deliveries := slices.Clone(hist)
			for _, ev := range hist {
				if rapid.IntRange(0, 3).Draw(rt, "dup") == 0 {
					deliveries = append(deliveries, ev)
				}
			}
			perm := rapid.Permutation(deliveries).Draw(rt, "order")
			for len(perm) > 0 {
				size := rapid.IntRange(1, len(perm)).Draw(rt, "batch")
				batch := perm[:size]
				perm = perm[size:]
				// A batch comes from one consumer, hence one stream.
				for _, src := range []event.Source{event.Realtime, event.Backfill} {
					var ds []pipeline.Delivery
					for _, ev := range batch {
						if ev.source == src {
							ds = append(ds, pipeline.Delivery{Subject: src.Subject("sites"), Source: src, StreamSeq: ev.seq, Data: []byte(ev.body())})
						}
					}
					if len(ds) == 0 {
						continue
					}
					prepared := pipeline.Preparer{Catalog: f.cat}.Prepare(ds)
					// In lanes, the batch is split by key and its lanes are
					// written side by side, as a consumer with Lanes does.
					lanes := []pipeline.Lane{{Deliveries: ds, Prepared: prepared}}
					if interleaving == "in lanes" {
						lanes = prepared.Split(ds, 3)
					}
					results := make([]apply.Result, len(lanes))
					errs := make([]error, len(lanes))
					var wg sync.WaitGroup
					for i, l := range lanes {
						wg.Go(func() {
							results[i], errs[i] = f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, NewBatch: f.fresh,
								Source: event.Realtime, Replica: "prop", Deliveries: l.Deliveries, Prepared: l.Prepared})
						})
					}
					wg.Wait()
					for i, res := range results {
						if errs[i] != nil {
							rt.Fatal(errs[i])
						}
						if !res.Counts.Balanced() || res.Counts.Failed != 0 {
							rt.Fatalf("counts %+v", res.Counts)
						}
					}
					f.fresh = false
				}
			}
			if got := f.rows(`SELECT contract, description FROM schedulehub.sites ORDER BY 1`); got != strings.Join(wantTarget, "\n") {
				rt.Fatalf("%s interleaving, target:\n%s\nwant\n%s", interleaving, got, strings.Join(wantTarget, "\n"))
			}
			got := f.rows(`SELECT business_key->>0, (rowversion_ord / 1000000 - extract(epoch FROM timestamptz '2026-01-01')::bigint), source_stream, stream_seq, deleted
				FROM bridge.synced_records ORDER BY 1`)
			if got != strings.Join(wantLedger, "\n") {
				rt.Fatalf("%s interleaving, ledger:\n%s\nwant\n%s", interleaving, got, strings.Join(wantLedger, "\n"))
			}
		}
	})
}
