package consumer

import (
	"context"
	"errors"
	"time"

	"github.com/syncflow/syncflow/internal/pipeline"
)

// Fetcher pulls batches of messages (stream.Fetcher).
type Fetcher interface {
	// Fetch returns up to n messages, waiting up to wait for the first. A fetcher
	// that delivers a range returns ErrEnd, or End(err), when it is done.
	Fetch(ctx context.Context, n int, wait time.Duration) ([]pipeline.Message, error)
}

// ErrEnd is returned by a fetcher that has nothing more to deliver (Bounded): the
// consumer writes and settles what it holds, and Run returns nil.
var ErrEnd = errors.New("consumer: nothing more to fetch")

// End is what a fetcher returns when err stops it for good: the consumer gives
// back the messages that came with it (as after any failed fetch), settles what
// it holds, and Run returns err. errors.Is(End(err), ErrEnd) holds.
func End(err error) error { return endError{err} }

type endError struct{ cause error }

func (e endError) Error() string        { return e.cause.Error() }
func (e endError) Unwrap() error        { return e.cause }
func (e endError) Is(target error) bool { return target == ErrEnd }

// Bounded delivers what Fetcher has, up to the stream sequence Last, and then
// ends (ErrEnd): replay consumes its range through one, and the stray drain a
// subject until it is empty. A fetch that comes back empty is the end, as is one
// that reaches past Last; a fetch that fails ends it with that failure (End).
type Bounded struct {
	Fetcher Fetcher
	// Last is the last stream sequence delivered (0: none but the end of the
	// stream). Messages after it are nakked at once, for whoever reads on.
	Last uint64
}

// Fetch fetches from Fetcher and stops at the end.
func (b *Bounded) Fetch(ctx context.Context, n int, wait time.Duration) ([]pipeline.Message, error) {
	msgs, err := b.Fetcher.Fetch(ctx, n, wait)
	switch {
	case err != nil && ctx.Err() != nil:
		return msgs, err // a shutdown, not the end
	case err != nil:
		return msgs, End(err)
	case len(msgs) == 0:
		return nil, ErrEnd
	case b.Last == 0:
		return msgs, nil
	}
	in := msgs[:0:0]
	for _, m := range msgs {
		if m.Delivery.StreamSeq <= b.Last {
			in = append(in, m)
		} else {
			_ = m.NakWithDelay(0)
		}
	}
	if len(in) < len(msgs) {
		return in, ErrEnd
	}
	return in, nil
}
