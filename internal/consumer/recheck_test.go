package consumer

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// oneFetch delivers its messages once, then ends.
type oneFetch struct{ msgs []pipeline.Message }

func (f *oneFetch) Fetch(context.Context, int, time.Duration) ([]pipeline.Message, error) {
	msgs := f.msgs
	f.msgs = nil
	return msgs, ErrEnd
}

// recheckWriter commits every batch with a re-check still to run, and says when
// the rolling batch is closed.
type recheckWriter struct {
	ev    *events
	asked []bool // each batch's DeferRecheck
}

func (w *recheckWriter) ApplyBatch(_ context.Context, b apply.Batch) (apply.Result, error) {
	w.asked = append(w.asked, b.DeferRecheck)
	w.ev.add("write %d", len(b.Deliveries))
	return apply.Result{
		Outcomes: []pipeline.Outcome{pipeline.Inserted, pipeline.Inserted}, Counts: pipeline.Counts{Fetched: 2, Inserted: 2},
		Recheck: func(ctx context.Context) {
			// The acks do not wait for the re-check: they come while it waits.
			for deadline := time.Now().Add(5 * time.Second); !slices.Contains(w.ev.list(), "ack 2"); {
				if time.Now().After(deadline) {
					w.ev.add("re-check before the acks")
					return
				}
				time.Sleep(time.Millisecond)
			}
			w.ev.add("re-check")
		},
	}, nil
}

func (w *recheckWriter) CloseBatch(context.Context, uuid.UUID, error) error {
	w.ev.add("close batch")
	return nil
}

// The re-check after a commit runs after the batch's messages are acked, and
// before the rolling batch it counts in is closed and Run returns.
func TestRecheckAfterTheAck(t *testing.T) {
	cat := shippedCatalog(t)
	sites, _ := cat.Entity("sites")
	ev := &events{}
	w := &recheckWriter{ev: ev}
	c := &Consumer{Entity: sites, Catalog: catalog.NewLive(cat), Source: event.Realtime, Writer: w,
		Fetcher: &oneFetch{msgs: fakeMessages(ev, 1, 2)}, Logger: slog.New(slog.DiscardHandler)}
	if err := c.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := []string{"write 2", "ack 1", "ack 2", "re-check", "close batch"}; !slices.Equal(ev.list(), want) {
		t.Errorf("events:\n got %q\nwant %q", ev.list(), want)
	}
	if !slices.Equal(w.asked, []bool{true}) {
		t.Errorf("DeferRecheck per batch = %v, want the re-check left to the consumer", w.asked)
	}
}
