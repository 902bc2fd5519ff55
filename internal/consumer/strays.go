package consumer

import (
	"context"
	"log/slog"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
)

// Strays drains the subjects no catalog entity owns into the dead letters, so that
// no message is left unread where nobody would notice it.
type Strays struct {
	Find     func(ctx context.Context) ([]Fetcher, error)
	Catalog  *catalog.Catalog
	Source   event.Source
	Writer   Writer
	Interval time.Duration // default 10s
	Replica  string
	Logger   *slog.Logger
}

// Run looks for stray subjects every Interval and dead-letters what they hold.
func (s *Strays) Run(ctx context.Context) error {
	interval := s.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	log := s.Logger.With("source", s.Source.Name)
	for {
		fetchers, err := s.Find(ctx)
		if err != nil && ctx.Err() == nil {
			log.Warn("looking for stray subjects failed", "err", err)
		}
		for _, f := range fetchers {
			s.drain(ctx, log, f)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

func (s *Strays) drain(ctx context.Context, log *slog.Logger, f Fetcher) {
	c := &Consumer{Catalog: s.Catalog, Source: s.Source, Writer: s.Writer, Rules: &Rules{}, Logger: log,
		Config: Config{Replica: s.Replica, RetryFor: 5 * time.Second}.withDefaults()}
	c.Now = time.Now
	c.Rules.Store(&mapping.Set{})
	defer c.closeBatch(log, nil)
	for ctx.Err() == nil {
		msgs, err := f.Fetch(ctx, 500, 10*time.Millisecond)
		if err != nil {
			c.settle(ctx, log, msgs, apply.Result{}, givenUp{err})
			return
		}
		if len(msgs) == 0 {
			return
		}
		res, err := c.process(ctx, ctx, log, msgs)
		if err == nil {
			log.Warn("dead-lettered messages on a subject no catalog entity owns", "subject", msgs[0].Delivery.Subject, "count", len(msgs))
		}
		c.settle(ctx, log, msgs, res, err)
	}
}
