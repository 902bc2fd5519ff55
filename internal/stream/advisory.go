package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// AdvisoryReader reads the max-deliveries advisories kept in the advisories stream.
type AdvisoryReader struct {
	js       jetstream.JetStream
	consumer jetstream.Consumer
}

// NewAdvisoryReader binds to the advisories consumer.
func NewAdvisoryReader(ctx context.Context, js jetstream.JetStream, defs Definitions) (*AdvisoryReader, error) {
	c, err := js.Consumer(ctx, defs.Advisories.Name, defs.AdvisoriesConsumer.Durable)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w (run `syncflow streams apply`)", defs.AdvisoriesConsumer.Durable, defs.Advisories.Name, err)
	}
	return &AdvisoryReader{js: js, consumer: c}, nil
}

type maxDeliverAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// Fetch returns up to n advisories with the messages they name. An advisory that
// cannot be parsed is acked and skipped (it names nothing to dead-letter).
func (r *AdvisoryReader) Fetch(ctx context.Context, n int, wait time.Duration) ([]deadletter.GaveUp, error) {
	fctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	batch, err := r.consumer.Fetch(n, jetstream.FetchContext(fctx))
	if err != nil {
		return nil, err
	}
	var out []deadletter.GaveUp
	for m := range batch.Messages() {
		var a maxDeliverAdvisory
		if err := json.Unmarshal(m.Data(), &a); err != nil || a.Stream == "" || a.StreamSeq == 0 {
			_ = m.Ack()
			continue
		}
		src, _ := event.SourceOfStream(a.Stream)
		g := deadletter.GaveUp{Consumer: a.Consumer, Deliveries: a.Deliveries, Ack: m.Ack, Nak: func() error { return m.NakWithDelay(2 * time.Second) },
			Delivery: pipeline.Delivery{StreamSeq: a.StreamSeq, Source: src}}
		s, err := r.js.Stream(ctx, a.Stream)
		if err != nil {
			return out, err
		}
		raw, err := s.GetMsg(ctx, a.StreamSeq)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return out, err
		default:
			g.Found = true
			g.Delivery.Subject, g.Delivery.Data, g.Delivery.Published = raw.Subject, raw.Data, raw.Time
		}
		out = append(out, g)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return out, err
	}
	return out, nil
}
