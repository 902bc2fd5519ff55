package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
)

func TestNakDelayDoubles(t *testing.T) {
	for _, tt := range []struct {
		delivered uint64
		want      time.Duration
	}{
		{0, 5 * time.Second}, {1, 5 * time.Second}, {2, 10 * time.Second}, {3, 20 * time.Second},
		{7, 5 * time.Minute}, {1000, 5 * time.Minute},
	} {
		if got := nakDelay(5*time.Second, tt.delivered); got != tt.want {
			t.Errorf("nakDelay(5s, %d) = %v, want %v", tt.delivered, got, tt.want)
		}
	}
}

// fakeWriter fails the first attempts with errs, then commits.
type fakeWriter struct {
	errs    []error
	batches []apply.Batch
}

func (f *fakeWriter) ApplyBatch(_ context.Context, b apply.Batch) (apply.Result, error) {
	f.batches = append(f.batches, b)
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		return apply.Result{}, err
	}
	return apply.Result{}, nil
}

func (f *fakeWriter) CloseBatch(context.Context, uuid.UUID, error) error { return nil }

// Whatever the database's failure, the batch is held and retried until it commits;
// after EscalateAfter timeouts it is written with its rows isolated; the hold is
// reported at every retry and its end once.
func TestWriteHoldsAndEscalates(t *testing.T) {
	timeout := fmt.Errorf("apply: %w", apply.ErrTimeout)
	w := &fakeWriter{errs: []error{
		fmt.Errorf("%w: read-only", apply.ErrUnavailable), timeout, errors.New("no known kind"), timeout, timeout, timeout,
	}}
	var holds []string
	escalated := 0
	c := &Consumer{Writer: w, Source: event.Realtime, Config: Config{EscalateAfter: 3,
		OnHold: func(_ string, _ event.Source, failure error) {
			holds = append(holds, apply.Kind(failure))
			if failure == nil {
				holds[len(holds)-1] = "released"
			}
		},
		OnEscalate: func(string, event.Source) { escalated++ },
	}.withDefaults()}
	ctx := context.Background()
	if _, err := c.write(ctx, ctx, slog.New(slog.DiscardHandler), apply.Batch{}, c.hold); err != nil {
		t.Fatal(err)
	}
	var isolated []bool
	for _, b := range w.batches {
		isolated = append(isolated, b.IsolateTimeouts)
	}
	if want := []bool{false, false, false, false, false, true, true}; !slices.Equal(isolated, want) {
		t.Errorf("IsolateTimeouts per attempt = %v, want %v", isolated, want)
	}
	if escalated != 1 {
		t.Errorf("escalated %d times, want 1", escalated)
	}
	want := []string{"database unavailable", "timed out", "error", "timed out", "timed out", "timed out", "released"}
	if !slices.Equal(holds, want) {
		t.Errorf("holds = %v, want %v", holds, want)
	}
}

// RetryFor gives a held batch up (the caller naks it); a shutdown ends the retries.
func TestWriteGivesUp(t *testing.T) {
	w := &fakeWriter{errs: slices.Repeat([]error{fmt.Errorf("%w", apply.ErrUnavailable)}, 1000)}
	c := &Consumer{Writer: w, Config: Config{RetryFor: 300 * time.Millisecond}.withDefaults()}
	ctx := context.Background()
	if _, err := c.write(ctx, ctx, slog.New(slog.DiscardHandler), apply.Batch{}, c.hold); !errors.Is(err, apply.ErrUnavailable) {
		t.Errorf("after RetryFor: %v", err)
	}
	c = &Consumer{Writer: w, Config: Config{}.withDefaults()}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := c.write(cctx, ctx, slog.New(slog.DiscardHandler), apply.Batch{}, c.hold); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("after the consumer's context ended: %v", err)
	}
}
