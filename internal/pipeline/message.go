package pipeline

import (
	"errors"
	"time"

	"github.com/syncflow/syncflow/internal/event"
)

// ErrUnknownEntity marks a message whose entity is not in the catalog (stage
// decode): it fails until the catalog gains the entity, and then succeeds.
var ErrUnknownEntity = errors.New("unknown entity")

// UnknownEntityReason begins the reason of such a dead letter.
var UnknownEntityReason = event.ErrDecode.Error() + ": " + ErrUnknownEntity.Error() + " "

// Message is one fetched message: what the pipeline needs, and the means to settle
// it. The transport stays behind the closures (the JetStream adapter fills them),
// so the loop that settles it never sees the transport and can be tested with
// fakes.
type Message struct {
	Delivery Delivery
	// NumDelivered counts deliveries of this message, this one included.
	NumDelivered uint64
	// Ack acknowledges the message (after its batch committed).
	Ack func() error
	// NakWithDelay asks for redelivery after the delay.
	NakWithDelay func(time.Duration) error
	// InProgress resets the message's ack timer while the consumer holds it.
	InProgress func() error
}
