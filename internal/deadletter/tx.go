package deadletter

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Store is what the sweeper and the retry worker need of the database.
type Store interface {
	// InTx runs fn in one transaction and commits when fn returns nil.
	InTx(ctx context.Context, fn func(Tx) error) error
}

// Tx is one transaction: apply's operations, and the ones on parked children and
// dead letters as such.
type Tx interface {
	apply.Tx
	// SelectParked locks (skipping locked ones) and returns the parked children
	// sel chooses, at most limit, without their events.
	SelectParked(ctx context.Context, sel ParkedSelection, limit int) ([]Parked, error)
	// WaitParked counts one more re-check of each row and sets its next one after
	// the row's delay.
	WaitParked(ctx context.Context, uids []uuid.UUID, delays []time.Duration) error
	// OrphanParked moves parked children into the dead letters at stage orphan,
	// with their events as received, the parent they waited for and a reason, and
	// returns the dead letters as written (for the log).
	OrphanParked(ctx context.Context, batch apply.BatchRow, orphans []Orphan, maxRetries int) ([]apply.DeadLetter, error)
	// TakeParked takes parked children out of the queue, with their events.
	TakeParked(ctx context.Context, uids []uuid.UUID) ([]apply.Released, error)
	// TakeReleasableOrphans locks the unresolved orphan dead letters whose parent
	// is applied, at most limit and about maxBytes of their events; more says the
	// bounds left some behind.
	TakeReleasableOrphans(ctx context.Context, limit, maxBytes int) (items []apply.Released, more bool, err error)
	// ParkedChildren returns the rows parked for children (entity and key hash).
	ParkedChildren(ctx context.Context, children []apply.Key) ([]Parked, error)
	// SelectDeadLetters locks (skipping locked ones) and returns the unresolved
	// dead letters sel chooses, at most limit and about maxBytes of their events;
	// more says the bounds left some for the next run.
	SelectDeadLetters(ctx context.Context, sel Selection, limit, maxBytes int) (dead []Dead, more bool, err error)
	// FailedAgain records a retry's failure on its dead letter (the earlier
	// attempt into its history), and its next retry after retryAfter (nil: none).
	FailedAgain(ctx context.Context, uid uuid.UUID, f pipeline.Failure, retryAfter *time.Duration) error
}

// Parked is a parked child as the sweeper sees it: without its event.
type Parked struct {
	UID                 uuid.UUID
	Child               apply.Key
	Parent              apply.Key
	ParentKey           string // the parent's key values, as JSON
	Retries, MaxRetries int
	Created             time.Time
	Size                int64 // the event's bytes
}

// Orphan is a parked child to turn into an orphan dead letter.
type Orphan struct {
	UID, DeadLetterUID uuid.UUID
	Reason             string
}

// Dead is an unresolved dead letter chosen for a retry.
type Dead struct {
	UID                 uuid.UUID
	Entity              string
	Delivery            pipeline.Delivery
	Retries, MaxRetries int
}
