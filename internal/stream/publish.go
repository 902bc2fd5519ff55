package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/backfill"
)

// Publisher publishes pages of backfill rows asynchronously, with a bounded number
// in flight (the JetStream context's WithPublishAsyncMaxPending).
type Publisher struct {
	JS jetstream.JetStream
}

// StallWait is how long a publish waits for room among the messages in flight
// before it fails. The client's default (200 ms) fails a backfill page whenever
// the broker is briefly slower than that to acknowledge, which a busy or
// clustered JetStream is.
const StallWait = 30 * time.Second

// PublishAll publishes msgs with their message ids and returns once JetStream
// acknowledged all of them, or with the first failure. A duplicate inside the
// stream's duplicate window counts as acknowledged.
func (p *Publisher) PublishAll(ctx context.Context, msgs []backfill.Message) error {
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		f, err := p.JS.PublishAsync(m.Subject, m.Body, jetstream.WithMsgID(m.ID), jetstream.WithStallWait(StallWait))
		if err != nil {
			return fmt.Errorf("publishing %s: %w", m.ID, err)
		}
		futures = append(futures, f)
	}
	var errs []error
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			errs = append(errs, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d messages were not acknowledged: %w", len(errs), len(msgs), errors.Join(errs[0]))
	}
	return nil
}
