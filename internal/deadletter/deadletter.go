// Package deadletter turns the records SyncFlow could not apply into work that gets
// finished: a sweeper re-checks parked children, a retry worker re-runs dead letters,
// and a drain dead-letters the messages JetStream gave up delivering.
//
// # Parked children
//
// A child whose parent has not been applied waits in bridge.pending_children. Its
// parent's transaction normally releases it; the sweeper re-checks it at
// next_retry_at anyway (the parent may have come by a path that did not release
// it), waiting twice as long each time, and after max_retries turns it into a dead
// letter at stage orphan that names the missing parent.
//
// # Dead letters
//
// Dead letters of the stages mapping, write and max_deliver are retried by the
// worker at next_retry_at, with exponential backoff, until max_retries; decode,
// normalization and orphan dead letters are not (the same bytes would fail the same
// way until someone changes the catalog, the publisher or the parent data), but any
// dead letter can be re-run by hand (`syncflow dlq retry`). A retry runs the record
// through the current pipeline; any outcome but a failure resolves it.
package deadletter

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
)

// Store is what the workers need of store.Store.
type Store interface {
	SweepParked(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, replica string, sel store.ParkedSelection) (store.SweepResult, error)
	RetryDeadLetters(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, replica string, sel store.DeadLetterSelection) (store.RetryResult, error)
	RecordDeadLetters(ctx context.Context, cat *catalog.Catalog, items []store.DeadLetter) error
}

// Worker sweeps parked children and retries due dead letters every Interval.
type Worker struct {
	Store   Store
	Catalog *catalog.Catalog
	// Rules returns the current mapping rules.
	Rules   func() *mapping.Set
	Replica string
	// Interval between rounds (default 5s).
	Interval time.Duration
	Logger   *slog.Logger
}

const roundLimit = 500

// Run works until ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	interval := w.Interval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := w.Round(ctx); err != nil && ctx.Err() == nil {
			w.Logger.Warn("dead-letter round failed; trying again next round", "err", err)
		}
	}
}

// Round sweeps every due parked child and retries every due dead letter.
func (w *Worker) Round(ctx context.Context) error {
	for {
		res, err := w.Store.SweepParked(ctx, w.Catalog, w.Rules(), w.Replica, store.ParkedSelection{Limit: roundLimit})
		if err != nil {
			return fmt.Errorf("sweeping parked children: %w", err)
		}
		if res.Examined > 0 {
			w.Logger.Info("swept parked children", "examined", res.Examined, "released", res.Released, "orphaned", res.Orphaned, "waiting", res.Waiting)
		}
		if !res.More {
			break
		}
	}
	for {
		res, err := w.Store.RetryDeadLetters(ctx, w.Catalog, w.Rules(), w.Replica, store.DeadLetterSelection{Due: true, Limit: roundLimit})
		if err != nil {
			return fmt.Errorf("retrying dead letters: %w", err)
		}
		if res.Retried > 0 {
			w.Logger.Info("retried dead letters", "retried", res.Retried, "resolved", res.Resolved, "failed_again", res.FailedAgain)
		}
		if res.Retried < roundLimit {
			return nil
		}
	}
}

// GaveUpDrain dead-letters the messages JetStream stopped delivering after
// max_deliver attempts (a message that crashed the service, or kept failing its
// write), from the advisories JetStream publishes about them.
type GaveUpDrain struct {
	Reader  *stream.AdvisoryReader
	Store   Store
	Catalog *catalog.Catalog
	Logger  *slog.Logger
}

// Run drains until ctx ends.
func (d *GaveUpDrain) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		gave, err := d.Reader.Fetch(ctx, 100, time.Second)
		if err == nil && len(gave) > 0 {
			err = d.record(ctx, gave)
		}
		if err != nil && ctx.Err() == nil {
			d.Logger.Warn("dead-lettering messages JetStream gave up on failed; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}
	return nil
}

func (d *GaveUpDrain) record(ctx context.Context, gave []stream.GaveUp) error {
	items := make([]store.DeadLetter, len(gave))
	for i, g := range gave {
		msg := fmt.Sprintf("JetStream stopped delivering this message to consumer %s after %d attempts: it kept failing to be written, or crashed the service", g.Consumer, g.Deliveries)
		if !g.Found {
			msg += " (the stream no longer holds it, so its bytes are lost)"
		}
		items[i] = store.DeadLetter{Delivery: g.Delivery, Failure: pipeline.Failure{
			Stage: pipeline.StageMaxDeliver, Entity: entityOf(g.Delivery.Subject), Err: fmt.Errorf("%s", msg)}}
	}
	if err := d.Store.RecordDeadLetters(ctx, d.Catalog, items); err != nil {
		// Not recorded: have JetStream deliver the advisories again.
		for _, g := range gave {
			_ = g.Nak()
		}
		return err
	}
	for _, g := range gave {
		_ = g.Ack()
	}
	d.Logger.Warn("dead-lettered messages JetStream gave up delivering", "count", len(gave))
	return nil
}

func entityOf(subject string) string {
	if e := event.SubjectEntity(subject); e != "" {
		return e
	}
	return store.UnknownEntity
}
