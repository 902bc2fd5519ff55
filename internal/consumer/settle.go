package consumer

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// A settlement is what becomes of the messages of a batch after an attempt to
// write it (or after the fetch that brought them, when they are not written).
type settlement int

const (
	// ack: the transaction committed. Every message is acked, those that became
	// dead letters too (rows the target rejected, events that failed to decode,
	// normalize or map): they are in bridge.failed_records now.
	ack settlement = iota
	// hold: the database is to blame, never the rows. The consumer keeps the
	// messages (alive, with InProgress), takes no new work and tries again.
	hold
	// redeliver: the consumer gives the batch back to JetStream: its fetch failed,
	// or RetryFor ran out while it was held. Each message is nakked with a delay
	// that grows with its deliveries; after max_deliver JetStream gives up on it,
	// and its advisory makes it a dead letter (stage max_deliver).
	redeliver
	// release: shutdown. Every message is nakked at once, for another replica or
	// the next start; a shutdown never makes a dead letter.
	release
)

// givenUp wraps the error after which the consumer gives a batch back to
// JetStream (redeliver) instead of holding it.
type givenUp struct{ error }

func (g givenUp) Unwrap() error { return g.error }

// decide is the one switch from the outcome of an attempt (err, nil after a
// commit) to a settlement. write asks it whether to hold; settle carries out the
// rest.
func decide(ctx context.Context, err error) settlement {
	switch {
	case err == nil:
		return ack
	case ctx.Err() != nil || errors.Is(err, context.Canceled):
		return release
	case errors.As(err, new(givenUp)):
		return redeliver
	default:
		// Whatever the failure: a database that refuses connections, is read-only
		// after a failover, rejects rotated credentials, runs out of resources,
		// times out, or fails in a way SyncFlow does not know.
		return hold
	}
}

// settle carries out decide for the messages of a batch that is no longer held.
func (c *Consumer) settle(ctx context.Context, log *slog.Logger, msgs []pipeline.Message, res apply.Result, err error) {
	switch decide(ctx, err) {
	case ack:
		for _, m := range msgs {
			if aerr := m.Ack(); aerr != nil {
				log.Warn("ack failed; the message will be redelivered and found unchanged", "err", aerr, "stream_seq", m.Delivery.StreamSeq)
			}
		}
		log.Debug("batch committed", "batch_size", len(msgs), "took", res.Took, "inserted", res.Counts.Inserted, "updated", res.Counts.Updated,
			"unchanged", res.Counts.Unchanged, "stale", res.Counts.Stale, "deleted", res.Counts.Deleted, "parked", res.Counts.Parked,
			"released", res.Counts.Released, "failed", res.Counts.Failed)
	case release:
		for _, m := range msgs {
			_ = m.NakWithDelay(0)
		}
	default:
		// redeliver (write turns a hold it ends into redeliver; an error that
		// reaches here unheld is given back the same way).
		if len(msgs) > 0 {
			log.Error("batch not written; redelivery requested", "err", err, "batch_size", len(msgs), "nak_delay", c.Config.NakDelay)
			c.closeBatch(log, err)
		}
		for _, m := range msgs {
			_ = m.NakWithDelay(nakDelay(c.Config.NakDelay, m.NumDelivered))
		}
	}
}

// nakDelay doubles base with every delivery after the first, up to 5 minutes.
func nakDelay(base time.Duration, delivered uint64) time.Duration {
	const ceiling = 5 * time.Minute
	d := base
	for i := uint64(1); i < delivered && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}
