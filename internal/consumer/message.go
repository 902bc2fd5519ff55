package consumer

import (
	"context"
	"time"

	"github.com/syncflow/syncflow/internal/pipeline"
)

// Message is one fetched message: what the pipeline needs, and the means to settle
// it. The transport stays behind the closures (stream.Fetcher fills them from
// JetStream), so the consumer never sees it and can be tested with fakes.
type Message struct {
	Delivery pipeline.Delivery
	// NumDelivered counts deliveries of this message, this one included.
	NumDelivered uint64
	// Ack acknowledges the message (after its batch committed).
	Ack func() error
	// NakWithDelay asks for redelivery after the delay.
	NakWithDelay func(time.Duration) error
	// InProgress resets the message's ack timer while the consumer holds it.
	InProgress func() error
}

// Fetcher pulls batches of messages (stream.Fetcher).
type Fetcher interface {
	// Fetch returns up to n messages, waiting up to wait for the first. A fetcher
	// that delivers a range returns ErrEnd, or End(err), when it is done.
	Fetch(ctx context.Context, n int, wait time.Duration) ([]Message, error)
}
