package deadletter

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// DeadLetters sweeps parked children and retries dead letters.
type DeadLetters struct {
	Store   Store
	Applier *apply.Applier
	cfg     Config
}

// New returns DeadLetters over store; the applier re-runs the records.
func New(store Store, applier *apply.Applier, cfg Config) (*DeadLetters, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &DeadLetters{Store: store, Applier: applier, cfg: cfg.WithDefaults()}, nil
}

// Worker sweeps parked children and retries due dead letters every Interval.
type Worker struct {
	DeadLetters *DeadLetters
	// Catalog is the catalog in force; each round takes the current one.
	Catalog *catalog.Live
	// Rules returns the current mapping rules.
	Rules   func() *mapping.Set
	Replica string
	// Refresh, when set, brings Catalog up to date before each round, so that a
	// dead letter of an entity the stored catalog has just gained is not
	// retried under a catalog that does not know it.
	Refresh func(ctx context.Context)
}

// Run works until ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	t := time.NewTicker(w.DeadLetters.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if w.Refresh != nil {
			w.Refresh(ctx)
		}
		if err := w.Round(ctx); err != nil && ctx.Err() == nil {
			w.DeadLetters.cfg.Logger.Warn("dead-letter round failed; trying again next round", "err", err)
		}
	}
}

// Round sweeps every due parked child and retries every due dead letter.
func (w *Worker) Round(ctx context.Context) error {
	d, log := w.DeadLetters, w.DeadLetters.cfg.Logger
	for {
		res, err := d.Sweep(ctx, w.Catalog.Load(), w.Rules(), w.Replica, ParkedSelection{})
		if err != nil {
			return fmt.Errorf("sweeping parked children: %w", err)
		}
		if res.Examined > 0 {
			log.Info("swept parked children", "examined", res.Examined, "released", res.Released, "orphaned", res.Orphaned, "waiting", res.Waiting)
		}
		if !res.More {
			break
		}
	}
	for {
		res, err := d.Retry(ctx, w.Catalog.Load(), w.Rules(), w.Replica, Selection{Due: true})
		if err != nil {
			return fmt.Errorf("retrying dead letters: %w", err)
		}
		if res.Retried > 0 {
			log.Info("retried dead letters", "retried", res.Retried, "resolved", res.Resolved, "failed_again", res.FailedAgain)
		}
		if !res.More {
			return nil
		}
	}
}

// GaveUp is a message JetStream stopped delivering to a consumer after max_deliver
// attempts, read back from its stream, with the means to settle its advisory.
type GaveUp struct {
	Consumer   string
	Deliveries uint64
	// Delivery is the message; Found is false when the stream no longer holds it.
	Delivery pipeline.Delivery
	Found    bool
	// Ack acknowledges the advisory (the dead letter is recorded); Nak asks for it
	// again (it could not be).
	Ack, Nak func() error
}

// AdvisoryReader reads the advisories of messages JetStream gave up on.
type AdvisoryReader interface {
	Fetch(ctx context.Context, n int, wait time.Duration) ([]GaveUp, error)
}

// GaveUpDrain dead-letters the messages JetStream stopped delivering after
// max_deliver attempts (a message that crashed the service, or kept failing its
// write), from the advisories JetStream publishes about them.
type GaveUpDrain struct {
	Reader  AdvisoryReader
	Applier *apply.Applier
	Catalog *catalog.Live
	Logger  *slog.Logger
}

// Run drains until ctx ends.
func (d *GaveUpDrain) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		gave, err := d.Reader.Fetch(ctx, 100, time.Second)
		if err == nil && len(gave) > 0 {
			err = d.Record(ctx, gave)
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

// Record dead-letters the messages of advisories, and settles the advisories:
// acked once recorded, nakked when they could not be.
func (d *GaveUpDrain) Record(ctx context.Context, gave []GaveUp) error {
	items := make([]apply.DeadLetter, len(gave))
	for i, g := range gave {
		msg := fmt.Sprintf("JetStream stopped delivering this message to consumer %s after %d attempts: it kept failing to be written, or crashed the service", g.Consumer, g.Deliveries)
		if !g.Found {
			msg += " (the stream no longer holds it, so its bytes are lost)"
		}
		items[i] = apply.DeadLetter{Delivery: g.Delivery, Failure: pipeline.Failure{
			Stage: pipeline.StageMaxDeliver, Entity: subjectEntity(g.Delivery.Subject), Err: fmt.Errorf("%s", msg)}}
	}
	if err := d.Applier.RecordDeadLetters(ctx, d.Catalog.Load(), items); err != nil {
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

func subjectEntity(subject string) string {
	if e := event.SubjectEntity(subject); e != "" {
		return e
	}
	return apply.UnknownEntity
}
