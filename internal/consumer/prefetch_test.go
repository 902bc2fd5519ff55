package consumer

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// scriptFetch delivers its batches one per fetch, then ends; it notes each fetch.
type scriptFetch struct {
	ev      *events
	batches [][]pipeline.Message
}

func (f *scriptFetch) Fetch(context.Context, int, time.Duration) ([]pipeline.Message, error) {
	if len(f.batches) == 0 {
		return nil, ErrEnd
	}
	b := f.batches[0]
	f.batches = f.batches[1:]
	f.ev.add("fetch %d", b[0].Delivery.StreamSeq)
	return b, nil
}

// slowWriter takes its time over every batch and notes it.
type slowWriter struct{ ev *events }

func (w *slowWriter) ApplyBatch(_ context.Context, b apply.Batch) (apply.Result, error) {
	w.ev.add("write %d", b.Deliveries[0].StreamSeq)
	time.Sleep(50 * time.Millisecond)
	return allInserted(b), nil
}

func (w *slowWriter) CloseBatch(context.Context, uuid.UUID, error) error { return nil }

// A consumer that is behind fetches its next batch while it writes the current
// one; a consumer that is caught up (its fetch came back short of a batch)
// fetches the next once the current one is written, so that the next takes all
// that came meanwhile instead of one message now and the rest a batch later.
func TestFetchAheadOnlyWhenBehind(t *testing.T) {
	cat := shippedCatalog(t)
	sitesEntity, _ := cat.Entity("sites")
	for _, tc := range []struct {
		name   string
		sizes  []int // messages per fetch, with a batch size of 2
		second string
		ahead  bool // the second fetch comes before the first batch is acked
	}{
		{"behind: full batches, fetched ahead", []int{2, 2}, "fetch 3", true},
		{"caught up: short batches, fetched after the write", []int{1, 1}, "fetch 2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := &events{}
			var total int
			for _, n := range tc.sizes {
				total += n
			}
			msgs := fakeMessages(ev, seqs(total)...)
			f := &scriptFetch{ev: ev}
			for _, n := range tc.sizes {
				f.batches, msgs = append(f.batches, msgs[:n]), msgs[n:]
			}
			c := &Consumer{Entity: sitesEntity, Catalog: catalog.NewLive(cat), Source: event.Realtime, Writer: &slowWriter{ev: ev},
				Fetcher: f, Logger: slog.New(slog.DiscardHandler), Config: Config{BatchSize: 2}}
			if err := c.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			got := ev.list()
			second, acked := slices.Index(got, tc.second), slices.Index(got, "ack 1")
			if second < 0 || acked < 0 || (second < acked) != tc.ahead {
				t.Errorf("events %q: %s before the first batch was written and acked = %v, want %v", got, tc.second, second < acked, tc.ahead)
			}
			if n := len(slices.DeleteFunc(got, func(e string) bool { return !strings.HasPrefix(e, "ack") })); n != total {
				t.Errorf("%d acks, want %d", n, total)
			}
		})
	}
}

// allInserted is the result of a batch whose every delivery was inserted.
func allInserted(b apply.Batch) apply.Result {
	res := apply.Result{Outcomes: make([]pipeline.Outcome, len(b.Deliveries)), Counts: pipeline.Counts{Fetched: int64(len(b.Deliveries))}}
	for i := range res.Outcomes {
		res.Outcomes[i] = pipeline.Inserted
	}
	return res
}

func seqs(n int) []uint64 {
	s := make([]uint64, n)
	for i := range s {
		s[i] = uint64(i + 1)
	}
	return s
}
