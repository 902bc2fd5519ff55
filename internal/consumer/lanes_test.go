package consumer

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// laneWriter commits every batch, after failing the first attempt of the lane
// holding key failKey; it records the keys of each attempt.
type laneWriter struct {
	mu       sync.Mutex
	attempts [][]string
	failKey  string
	failed   bool
}

func (w *laneWriter) ApplyBatch(_ context.Context, b apply.Batch) (apply.Result, error) {
	var keys []string
	for _, c := range b.Prepared.Candidates {
		keys = append(keys, c.Record.Fields["CONTRACT"].(string))
	}
	w.mu.Lock()
	w.attempts = append(w.attempts, keys)
	fail := !w.failed && slices.Contains(keys, w.failKey)
	w.failed = w.failed || fail
	w.mu.Unlock()
	if fail {
		return apply.Result{}, fmt.Errorf("%w: connection refused", apply.ErrUnavailable)
	}
	return allInserted(b), nil
}

func (w *laneWriter) CloseBatch(context.Context, uuid.UUID, error) error { return nil }

// sites are messages of sites with the given keys, each twice (two versions).
func sites(ev *events, keys int) []pipeline.Message {
	var msgs []pipeline.Message
	for v := range 2 {
		for k := range keys {
			seq := uint64(v*keys + k + 1)
			body := fmt.Sprintf(`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:%02dZ","data":{"CONTRACT":"S%d"}}`, v, k)
			msgs = append(msgs, pipeline.Message{
				Delivery:     pipeline.Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: seq, Data: []byte(body)},
				Ack:          func() error { ev.add("ack %d", seq); return nil },
				NakWithDelay: func(time.Duration) error { ev.add("nak %d", seq); return nil },
				InProgress:   func() error { return nil },
			})
		}
	}
	return msgs
}

// A large batch of an entity without parents is written in lanes, each over keys
// of its own with both versions of each of them; a lane that fails is held and
// retried on its own; every message is acked once every lane has committed.
// Smaller batches, and entities with parents, are written whole.
func TestLanes(t *testing.T) {
	cat := shippedCatalog(t)
	for _, tc := range []struct {
		name   string
		entity string
		keys   int
		lanes  int // batches written at first
	}{
		{"250 keys, 2 lanes of at least 100", "sites", 250, 2},
		{"150 keys: one lane", "sites", 150, 1},
		{"an entity with parents: whole", "work_centers", 250, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _ := cat.Entity(tc.entity)
			ev := &events{}
			msgs := sites(ev, tc.keys)
			if tc.entity != "sites" {
				for i := range msgs {
					msgs[i].Delivery.Subject = "apismith.cdc.work_centers"
					msgs[i].Delivery.Data = []byte(fmt.Sprintf(`{"entity":"work_centers","op":"upsert","rowversion":"2026-01-01T00:00:0%dZ","data":{"CONTRACT":"S1","WORK_CENTER_NO":"W%d"}}`,
						i/tc.keys, i%tc.keys))
				}
			}
			w := &laneWriter{failKey: "S7"}
			c := &Consumer{Entity: e, Catalog: catalog.NewLive(cat), Source: event.Realtime, Writer: w,
				Fetcher: &oneFetch{msgs: msgs}, Logger: slog.New(slog.DiscardHandler), Config: Config{Lanes: 2, LaneMin: 100}}
			if err := c.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			if tc.entity == "sites" {
				// The first attempt of each lane, and the retry of the one that failed.
				if len(w.attempts) != tc.lanes+1 {
					t.Fatalf("%d attempts, want %d lanes and one retry", len(w.attempts), tc.lanes)
				}
				seen := map[string]int{}
				for i, keys := range w.attempts[:tc.lanes] {
					for _, k := range keys {
						if j, ok := seen[k]; ok {
							t.Errorf("key %s in lanes %d and %d", k, j, i)
						}
						seen[k] = i
					}
				}
				if len(seen) != tc.keys {
					t.Errorf("the lanes hold %d keys, want %d", len(seen), tc.keys)
				}
			} else if len(w.attempts) != 1 {
				t.Errorf("attempts %d, want the batch whole", len(w.attempts))
			}
			var acks []string
			for _, s := range ev.list() {
				if s[:3] != "ack" {
					t.Errorf("a message was told %q", s)
				}
				acks = append(acks, s)
			}
			if len(acks) != len(msgs) {
				t.Errorf("%d acks, want %d", len(acks), len(msgs))
			}
		})
	}
}

// fussyWriter fails each lane as many times as fails says for the first key of
// the lane that it names.
type fussyWriter struct {
	mu    sync.Mutex
	fails map[string]int
}

func (w *fussyWriter) ApplyBatch(_ context.Context, b apply.Batch) (apply.Result, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range b.Prepared.Candidates {
		if k := c.Record.Fields["CONTRACT"].(string); w.fails[k] > 0 {
			w.fails[k]--
			return apply.Result{}, fmt.Errorf("%w: connection refused", apply.ErrUnavailable)
		}
	}
	return allInserted(b), nil
}

func (w *fussyWriter) CloseBatch(context.Context, uuid.UUID, error) error { return nil }

// A batch written in lanes is held while any lane is: a lane that commits while
// another still retries does not report the hold over.
func TestLanesAreHeldTogether(t *testing.T) {
	cat := shippedCatalog(t)
	e, _ := cat.Entity("sites")
	// Two keys the split puts in different lanes: their lanes fail once and
	// twice.
	msgs := sites(&events{}, 300)
	ds := make([]pipeline.Delivery, len(msgs))
	for i, m := range msgs {
		ds[i] = m.Delivery
	}
	lanes := pipeline.Preparer{Catalog: cat}.Prepare(ds).Split(ds, 3)
	if len(lanes) < 2 {
		t.Fatalf("%d lanes", len(lanes))
	}
	first := func(l pipeline.Lane) string { return l.Prepared.Candidates[0].Record.Fields["CONTRACT"].(string) }
	w := &fussyWriter{fails: map[string]int{first(lanes[0]): 1, first(lanes[1]): 2}}
	var mu sync.Mutex
	var reports []string
	c := &Consumer{Entity: e, Catalog: catalog.NewLive(cat), Source: event.Realtime, Writer: w,
		Fetcher: &oneFetch{msgs: msgs}, Logger: slog.New(slog.DiscardHandler),
		Config: Config{Lanes: 3, LaneMin: 100, OnHold: func(_ string, _ event.Source, failure error) {
			mu.Lock()
			defer mu.Unlock()
			if failure == nil {
				reports = append(reports, "over")
			} else {
				reports = append(reports, "held")
			}
		}}}
	if err := c.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(reports) < 2 || reports[len(reports)-1] != "over" || slices.Contains(reports[:len(reports)-1], "over") {
		t.Errorf("hold reports %q, want held until every lane committed, then over once", reports)
	}
}
