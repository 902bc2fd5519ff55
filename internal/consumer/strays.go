package consumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Strays drains the subjects no catalog entity owns into the dead letters, so that
// no message is left unread where nobody would notice it. Every Interval it asks
// Find for a fetcher per stray subject, and drains each with a Consumer that has
// no entity, over a Bounded fetcher: every message fails at decode ("unknown
// entity"), and is acked once its dead letter is committed.
type Strays struct {
	// Find gives a fetcher for each stray subject (stream.StrayFinder.Find).
	Find    func(ctx context.Context) ([]Fetcher, error)
	Catalog *catalog.Live
	// Refresh, when set, brings Catalog up to date before each round, so that
	// an entity the stored catalog has just gained is never called unknown.
	Refresh func(ctx context.Context)
	Source  event.Source
	Writer  Writer
	Config  StrayConfig
	Logger  *slog.Logger
}

// StrayConfig tunes the stray drain.
type StrayConfig struct {
	// Interval is how often stray subjects are looked for (default 10s).
	Interval time.Duration
	// Replica names this process in sync_batches.
	Replica string
}

func (c StrayConfig) withDefaults() StrayConfig {
	c.Interval = cmp.Or(c.Interval, 10*time.Second)
	return c
}

// Validate reports every setting out of range.
func (c StrayConfig) Validate() error {
	var errs []error
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("consumer: the stray interval must not be negative (%v)", c.Interval))
	}
	return errors.Join(errs...)
}

// Run looks for stray subjects every Interval and dead-letters what they hold.
func (s *Strays) Run(ctx context.Context) error {
	if err := s.Config.Validate(); err != nil {
		return err
	}
	cfg := s.Config.withDefaults()
	log := s.Logger.With("source", s.Source.Name)
	for {
		if s.Refresh != nil {
			s.Refresh(ctx)
		}
		fetchers, err := s.Find(ctx)
		if err != nil && ctx.Err() == nil {
			log.Warn("looking for stray subjects failed", "err", err)
		}
		for _, f := range fetchers {
			if err := s.drain(ctx, log, cfg, f); err != nil && ctx.Err() == nil {
				log.Warn("draining a stray subject failed; trying again later", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cfg.Interval):
		}
	}
}

// drain dead-letters what f holds, until it is empty. Its consumer waits only a
// moment for a message (an empty fetch is the end), and gives a batch it cannot
// write back to JetStream after a few seconds, so that an outage does not keep the
// drain from the other subjects.
func (s *Strays) drain(ctx context.Context, log *slog.Logger, cfg StrayConfig, f Fetcher) error {
	c := &Consumer{Catalog: s.Catalog, Source: s.Source, Fetcher: &Bounded{Fetcher: ownedSkipped{f, s}}, Writer: s.Writer, Logger: s.Logger,
		Config: Config{Replica: cfg.Replica, FetchWait: 10 * time.Millisecond, RetryFor: 5 * time.Second,
			OnCommit: func(_ string, _ event.Source, msgs []pipeline.Message, _ apply.Result) {
				log.Warn("dead-lettered messages on a subject no catalog entity owns", "subject", msgs[0].Delivery.Subject, "count", len(msgs))
			}}}
	return c.Run(ctx)
}

// ownedSkipped hands on the messages of subjects no entity owns, and acks the
// others at once: an entity the catalog gained since the drain began reads its
// own copy of them through its durable consumer, so they are not strays.
type ownedSkipped struct {
	Fetcher
	s *Strays
}

func (o ownedSkipped) Fetch(ctx context.Context, n int, wait time.Duration) ([]pipeline.Message, error) {
	msgs, err := o.Fetcher.Fetch(ctx, n, wait)
	cat := o.s.Catalog.Load()
	if cat == nil {
		return msgs, err
	}
	out := msgs[:0:0]
	for _, m := range msgs {
		if entity, ok := strings.CutPrefix(m.Delivery.Subject, o.s.Source.SubjectPrefix); ok {
			if _, known := cat.Entity(entity); known {
				_ = m.Ack()
				continue
			}
		}
		out = append(out, m)
	}
	return out, err
}
