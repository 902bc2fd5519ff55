package apply

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/normalize"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Store is what applying needs of the database outside a transaction.
type Store interface {
	// InTx runs fn in one transaction and commits when fn returns nil. Its error
	// is classified (see the kinds in errors.go).
	InTx(ctx context.Context, fn func(Tx) error) error
	// Releasable returns, cheaply, which of parents are applied now and have
	// children or orphan dead letters waiting for them, in parents' order.
	Releasable(ctx context.Context, parents []Key) ([]Key, error)
	// NoteCheckpoints hands the highest committed rowversion per source system of
	// entity to the checkpointer.
	NoteCheckpoints(entity string, batch uuid.UUID, highs map[string]event.RowVersion)
}

// Tx is one transaction: one operation per statement, deciding nothing.
type Tx interface {
	// ReadLedger reads the ledger rows of entity's keys (bk_hash); a key without
	// a row is absent from the result. It takes no lock: another transaction
	// may write a newer version before this one writes, and Write's guards
	// (the ledger's in SQL, the caller's rollback of a target row whose ledger
	// row lost) keep the newer. It also says which of parents are applied, as
	// ParentsPresent does, in the same round trip.
	ReadLedger(ctx context.Context, entity string, hashes []string, parents []Key) (map[string]pipeline.Applied, map[Key]bool, error)
	// ParentsPresent says which keys are applied: in the ledger and not deleted.
	ParentsPresent(ctx context.Context, keys []Key) (map[Key]bool, error)
	// Park writes parked children, one row per child key; a version not newer
	// than the one parked (pipeline.Compare) is refused. It returns the child
	// hashes it wrote.
	Park(ctx context.Context, batch uuid.UUID, entity string, rows []ParkRow, firstRetry time.Duration, maxRetries int) (map[string]bool, error)
	// TakeReleased takes out of the queue, in key order and within limit rows and
	// maxBytes of events, the children waiting for parents that are applied, and
	// locks the unresolved orphan dead letters that name them; more says the
	// bounds left children behind.
	TakeReleased(ctx context.Context, parents []Key, limit, maxBytes int) (items []Released, more bool, err error)
	// MarkDue makes the children waiting for parents due for the sweeper now.
	MarkDue(ctx context.Context, parents []Key) error
	// ResolveDeadLetters marks dead letters resolved, with note.
	ResolveDeadLetters(ctx context.Context, uids []uuid.UUID, note string) error
	// WriteLedger writes ledger rows of entity, each only where it supersedes the
	// row there (pipeline.Supersedes, in SQL); it returns the hashes it wrote.
	WriteLedger(ctx context.Context, entity string, batch uuid.UUID, rows []LedgerRow) (map[string]bool, error)
	// Write writes rows of entity: each target row (upserted, merging or
	// replacing as the catalog says, or deleted) and each ledger row, the ledger
	// row only where it supersedes the row there (as WriteLedger), with what its
	// target row holds once written (its verification hash). It returns the
	// hashes whose ledger rows it wrote, and those of the repair rewrites
	// (WriteRow.Rewrite) whose version the ledger still holds. A target row is
	// written even when its ledger row is not (or a rewrite's version was
	// overtaken): the caller rolls the savepoint back. The target rows go
	// first and the ledger rows after them, each in key order, in every
	// transaction: two transactions writing the same keys, new or not, take
	// their locks in the same order. With release, it then takes what
	// TakeReleased would (in the same round trip, so a parent's small batch
	// costs none more); a rollback of the savepoint puts it back.
	Write(ctx context.Context, entity string, batch uuid.UUID, rows []WriteRow, release *ReleaseAfter) (Written, error)
	// WriteTarget upserts (merges, or replaces, as the catalog says) and deletes
	// rows of entity's target table. Each upsert's ledger row learns what the
	// target row holds once written (its verification hash).
	WriteTarget(ctx context.Context, entity string, upserts []TargetRow, deletes []map[string]any) error
	// Savepoint runs fn under a savepoint, rolled back when fn fails, or when a
	// statement under it failed though fn went on.
	Savepoint(ctx context.Context, fn func() error) error
	// AddDeadLetters writes dead letters, one unresolved per message: a message
	// that already has one updates it, the earlier attempt kept in its history.
	AddDeadLetters(ctx context.Context, batch *uuid.UUID, sourceSystem string, dead []DeadLetter) error
	// CountBatch adds counts to a sync_batches row, creating it when missing, and
	// closes it as completed when close is set. It may go with the next statement
	// of the transaction, or with its commit: its error can come back from those.
	CountBatch(ctx context.Context, b BatchRow, c pipeline.Counts, close bool) error
	// SetStatementTimeout sets the statement timeout for the rest of the
	// transaction.
	SetStatementTimeout(ctx context.Context, d time.Duration) error
}

// Key names one row of an entity: a parent a child waits for, or a parent applied.
type Key struct{ Entity, Hash string }

// ParkRow is a child parked under its first missing parent.
type ParkRow struct {
	Child    normalize.Record
	Version  pipeline.Version
	Parent   normalize.ParentRef
	Delivery pipeline.Delivery
}

// Released is a child taken out of the queue, or an orphan dead letter (UID) whose
// parent has come.
type Released struct {
	Orphan   bool
	UID      uuid.UUID
	Delivery pipeline.Delivery
}

// TargetRow is a mapped row to upsert into a target, and the key hash of its
// ledger row.
type TargetRow struct {
	BKHash string
	Row    map[string]any
}

// WriteRow is one key's write: the ledger row of its version, and, when Target
// is set, its target row: Row upserted, or deleted (LedgerRow.Deleted; Row holds
// the key). Rewrite marks a repair rewrite: the target row is written and its
// ledger row learns its hash, though the ledger keeps the version it holds.
type WriteRow struct {
	LedgerRow
	Target  bool
	Rewrite bool
	Row     map[string]any
}

// ReleaseAfter asks a Write to release, once its rows are written, the children
// waiting for Parents within TakeReleased's bounds.
type ReleaseAfter struct {
	Parents         []Key
	Limit, MaxBytes int
}

// Written is what a Write did: the hashes whose ledger rows it wrote (and the
// repair rewrites whose version the ledger holds), and what it released, with
// More saying the bounds left children behind.
type Written struct {
	Hashes   map[string]bool
	Released []Released
	More     bool
}

// LedgerRow is what the ledger keeps of one applied version.
type LedgerRow struct {
	Record  normalize.Record
	Version pipeline.Version
	Deleted bool
}

// DeadLetter is a failed delivery, and when it is first retried (nil: by hand
// only) and how often.
type DeadLetter struct {
	pipeline.Failure
	Delivery   pipeline.Delivery
	RetryAfter *time.Duration
	MaxRetries int
}

// BatchRow is a sync_batches row: the unit of work its counts add up in.
type BatchRow struct {
	UID          uuid.UUID
	Entity       string
	SourceSystem string
	SyncType     string
	Replica      string
}
