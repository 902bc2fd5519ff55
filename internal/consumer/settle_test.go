package consumer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
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
	"github.com/syncflow/syncflow/streams"
)

// events is what happened to a batch, in order: the writer's attempts, the holds
// reported, and what each message was told.
type events struct {
	mu  sync.Mutex
	got []string
}

func (e *events) add(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, fmt.Sprintf(format, args...))
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.got)
}

// fakeMessages are sites events at stream sequences seqs, delivered as often as
// their sequence says, that record what they are told.
func fakeMessages(ev *events, seqs ...uint64) []pipeline.Message {
	var msgs []pipeline.Message
	for _, seq := range seqs {
		body := fmt.Sprintf(`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:%02dZ","data":{"CONTRACT":"S%d"}}`, seq, seq)
		msgs = append(msgs, pipeline.Message{
			Delivery:     pipeline.Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: seq, Data: []byte(body)},
			NumDelivered: seq,
			Ack:          func() error { ev.add("ack %d", seq); return nil },
			NakWithDelay: func(d time.Duration) error { ev.add("nak %d %v", seq, d); return nil },
			InProgress:   func() error { ev.add("in progress %d", seq); return nil },
		})
	}
	return msgs
}

// attempt is what one write attempt of scriptWriter returns; stop ends the
// consumer's context while it is being written (a shutdown).
type attempt struct {
	res  apply.Result
	err  error
	stop bool
}

// scriptWriter answers the attempts to write a batch from a script.
type scriptWriter struct {
	t      *testing.T
	ev     *events
	script []attempt
	stop   context.CancelFunc
}

func (w *scriptWriter) ApplyBatch(_ context.Context, b apply.Batch) (apply.Result, error) {
	w.ev.add("write %d", len(b.Deliveries))
	if len(w.script) == 0 {
		w.t.Errorf("an attempt beyond the script")
		return apply.Result{}, errors.New("beyond the script")
	}
	a := w.script[0]
	w.script = w.script[1:]
	if a.stop {
		w.stop()
	}
	return a.res, a.err
}

func (w *scriptWriter) CloseBatch(context.Context, uuid.UUID, error) error { return nil }

func shippedCatalog(t *testing.T) *catalog.Catalog {
	t.Helper()
	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// The settle switch, over every outcome of writing a batch of two messages (the
// second delivered twice): what the writer is asked, what is reported held, and
// what each message is told.
func TestSettle(t *testing.T) {
	cat := shippedCatalog(t)
	sites, _ := cat.Entity("sites")
	unavailable := fmt.Errorf("%w: connection refused", apply.ErrUnavailable)
	conflict := fmt.Errorf("%w: deadlock detected", apply.ErrConflict)
	rejected := fmt.Errorf("%w: value too long", apply.ErrRowRejected)
	committed := apply.Result{Outcomes: []pipeline.Outcome{pipeline.Inserted, pipeline.Inserted}, Counts: pipeline.Counts{Fetched: 2, Inserted: 2}}
	for _, tt := range []struct {
		name     string
		fetchErr error         // the fetch that brought the batch failed
		stopped  bool          // the consumer's context ended before the batch's turn
		retryFor time.Duration // Config.RetryFor
		script   []attempt
		want     []string
	}{{
		name:   "commit: every message acked",
		script: []attempt{{res: committed}},
		want:   []string{"write 2", "ack 1", "ack 2"},
	}, {
		name: "rows rejected: dead letters committed with the rest, every message acked",
		script: []attempt{{res: apply.Result{Outcomes: []pipeline.Outcome{pipeline.Inserted, pipeline.Failed},
			Counts: pipeline.Counts{Fetched: 2, Inserted: 1, Failed: 1}}}},
		want: []string{"write 2", "ack 1", "ack 2"},
	}, {
		name:   "transient: the batch is held, nothing settled, until it commits",
		script: []attempt{{err: unavailable}, {err: conflict}, {res: committed}},
		want: []string{"write 2", "held: database unavailable", "write 2", "held: transaction conflict", "write 2", "hold over",
			"ack 1", "ack 2"},
	}, {
		name:   "transient: a failure of no known kind is the database's too",
		script: []attempt{{err: errors.New("something new")}, {res: committed}},
		want:   []string{"write 2", "held: error", "write 2", "hold over", "ack 1", "ack 2"},
	}, {
		name:   "transient: a rejection the writer could not pin on a row is held, never a dead letter",
		script: []attempt{{err: rejected}, {res: committed}},
		want:   []string{"write 2", "held: row rejected", "write 2", "hold over", "ack 1", "ack 2"},
	}, {
		name:     "permanent: RetryFor ran out, the batch goes back to JetStream with delays growing per delivery",
		retryFor: time.Nanosecond,
		script:   []attempt{{err: unavailable}},
		want:     []string{"write 2", "nak 1 5s", "nak 2 10s"},
	}, {
		name:     "permanent: the fetch failed, its messages go back to JetStream unwritten",
		fetchErr: givenUp{errors.New("nats: connection closed")},
		want:     []string{"nak 1 5s", "nak 2 10s"},
	}, {
		name:    "shutdown: a batch fetched ahead is nakked at once, unwritten",
		stopped: true,
		want:    []string{"nak 1 0s", "nak 2 0s"},
	}, {
		name:   "shutdown while held: nakked at once, never a dead letter",
		script: []attempt{{err: unavailable, stop: true}},
		want:   []string{"write 2", "nak 1 0s", "nak 2 0s"},
	}, {
		name:   "shutdown while writing: the write in flight commits in its grace and is acked",
		script: []attempt{{res: committed, stop: true}},
		want:   []string{"write 2", "ack 1", "ack 2"},
	}} {
		t.Run(tt.name, func(t *testing.T) {
			ev := &events{}
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			w := &scriptWriter{t: t, ev: ev, script: tt.script, stop: stop}
			c := &Consumer{Entity: sites, Catalog: catalog.NewLive(cat), Source: event.Realtime, Writer: w,
				Config: Config{RetryFor: tt.retryFor, OnHold: func(_ string, _ event.Source, failure error) {
					if failure == nil {
						ev.add("hold over")
						return
					}
					ev.add("held: %s", apply.Kind(failure))
				}}.withDefaults()}
			if tt.stopped {
				stop()
			}
			c.handle(ctx, context.Background(), slog.New(slog.DiscardHandler), fetched{msgs: fakeMessages(ev, 1, 2), err: tt.fetchErr})
			if got := ev.list(); !slices.Equal(got, tt.want) {
				t.Errorf("events:\n got %q\nwant %q", got, tt.want)
			}
			if len(w.script) > 0 {
				t.Errorf("%d scripted attempts not made", len(w.script))
			}
		})
	}
}
