package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// listFetcher hands out its batches in order, then nothing (or err).
type listFetcher struct {
	batches [][]pipeline.Message
	err     error
}

func (f *listFetcher) Fetch(context.Context, int, time.Duration) ([]pipeline.Message, error) {
	if len(f.batches) == 0 {
		return nil, f.err
	}
	b := f.batches[0]
	f.batches = f.batches[1:]
	return b, nil
}

// settled groups what each message was told by stream sequence ("ack", "nak 0s").
func settled(evs []string) map[string][]string {
	out := map[string][]string{}
	for _, e := range evs {
		verb, rest, _ := strings.Cut(e, " ")
		if verb != "ack" && verb != "nak" {
			continue
		}
		seq, delay, _ := strings.Cut(rest, " ")
		out[seq] = append(out[seq], strings.TrimSpace(verb+" "+delay))
	}
	return out
}

func writes(evs []string) []string {
	return slices.DeleteFunc(slices.Clone(evs), func(e string) bool { return !strings.HasPrefix(e, "write ") })
}

func commits(n int) []attempt {
	return slices.Repeat([]attempt{{res: apply.Result{Counts: pipeline.Counts{Fetched: 1}}}}, n)
}

func boundedConsumer(t *testing.T, ev *events, f Fetcher, script []attempt) (*Consumer, *scriptWriter) {
	cat := shippedCatalog(t)
	sites, _ := cat.Entity("sites")
	w := &scriptWriter{t: t, ev: ev, script: script}
	return &Consumer{Entity: sites, Catalog: catalog.NewLive(cat), Source: event.Realtime, Fetcher: f, Writer: w, Logger: slog.New(slog.DiscardHandler),
		Config: Config{FetchWait: time.Millisecond, OnHold: func(_ string, _ event.Source, failure error) {
			if failure != nil {
				ev.add("held: %s", apply.Kind(failure))
			}
		}}}, w
}

// A bounded consumer writes its range and returns: what lies past Last is
// nakked for whoever reads on, and not written.
func TestBoundedEndsAtLast(t *testing.T) {
	ev := &events{}
	f := &Bounded{Fetcher: &listFetcher{batches: [][]pipeline.Message{fakeMessages(ev, 1, 2, 3), fakeMessages(ev, 4, 5, 6), fakeMessages(ev, 7)}}, Last: 4}
	c, _ := boundedConsumer(t, ev, f, commits(2))
	if err := c.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := map[string][]string{"1": {"ack"}, "2": {"ack"}, "3": {"ack"}, "4": {"ack"}, "5": {"nak 0s"}, "6": {"nak 0s"}}
	if got := settled(ev.list()); !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("settled %v, want %v", got, want)
	}
	if got := writes(ev.list()); !slices.Equal(got, []string{"write 3", "write 1"}) {
		t.Errorf("writes %v", got)
	}
}

// A bounded consumer ends at the first empty fetch (the end of the stream).
func TestBoundedEndsWhenEmpty(t *testing.T) {
	ev := &events{}
	f := &Bounded{Fetcher: &listFetcher{batches: [][]pipeline.Message{fakeMessages(ev, 1, 2)}}}
	c, _ := boundedConsumer(t, ev, f, commits(1))
	if err := c.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := settled(ev.list()), map[string][]string{"1": {"ack"}, "2": {"ack"}}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("settled %v, want %v", got, want)
	}
}

// A fetch that fails ends a bounded consumer with its error, after what it
// fetched before is written.
func TestBoundedEndsWithAFailedFetch(t *testing.T) {
	ev := &events{}
	lost := errors.New("nats: consumer deleted")
	f := &Bounded{Fetcher: &listFetcher{batches: [][]pipeline.Message{fakeMessages(ev, 1, 2)}, err: lost}}
	c, _ := boundedConsumer(t, ev, f, commits(1))
	if err := c.Run(context.Background()); !errors.Is(err, lost) {
		t.Fatalf("Run: %v, want %v", err, lost)
	}
	if got, want := settled(ev.list()), map[string][]string{"1": {"ack"}, "2": {"ack"}}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("settled %v, want %v", got, want)
	}
}

// Replay's consumer (a bounded one) holds its batch through a database outage
// like the service's: the batch is retried until it commits, then the rest of the
// range follows, and every message is acked once, none nakked.
func TestBoundedHoldsItsBatchThroughAnOutage(t *testing.T) {
	ev := &events{}
	unavailable := fmt.Errorf("%w: the database system is starting up", apply.ErrUnavailable)
	f := &Bounded{Fetcher: &listFetcher{batches: [][]pipeline.Message{fakeMessages(ev, 1, 2), fakeMessages(ev, 3)}}, Last: 3}
	c, w := boundedConsumer(t, ev, f, append([]attempt{{err: unavailable}, {err: unavailable}}, commits(2)...))
	if err := c.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := map[string][]string{"1": {"ack"}, "2": {"ack"}, "3": {"ack"}}
	if got := settled(ev.list()); !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("settled %v, want %v", got, want)
	}
	var got []string
	for _, e := range ev.list() {
		if !strings.HasPrefix(e, "in progress") && !strings.HasPrefix(e, "ack") {
			got = append(got, e)
		}
	}
	if want := []string{"write 2", "held: database unavailable", "write 2", "held: database unavailable", "write 2", "write 1"}; !slices.Equal(got, want) {
		t.Errorf("attempts and holds %v, want %v", got, want)
	}
	if len(w.script) > 0 {
		t.Errorf("%d scripted attempts not made", len(w.script))
	}
}
