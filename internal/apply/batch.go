package apply

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Applier applies batches, one transaction each, through a Store.
type Applier struct {
	Store Store
	cfg   Config
	dead  *deadLetterLog
}

// NewApplier returns an Applier for store; cfg must be valid (Config.Validate).
func NewApplier(store Store, cfg Config) (*Applier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Applier{Store: store, cfg: cfg, dead: &deadLetterLog{log: cfg.Logger}}, nil
}

// Work starts the work of one transaction, counted in batch.
func (a *Applier) Work(tx Tx, batch BatchRow, cat *catalog.Catalog, rules *mapping.Set) *Work {
	return &Work{tx: tx, cfg: a.cfg, batch: batch, cat: cat, rules: rules,
		highs: map[string]map[string]event.RowVersion{}, inverted: map[string]int64{}}
}

// Committed is what follows the commit of w's transaction: the log of its dead
// letters, the checkpoints, and the re-check of parents and children.
func (a *Applier) Committed(ctx context.Context, w *Work) {
	a.log(w)
	a.noteCheckpoints(w)
	a.recheckAfterCommit(ctx, w)
}

func (a *Applier) log(w *Work) {
	for _, d := range w.dead {
		a.dead.note(d)
	}
	for _, d := range w.logged {
		a.dead.note(d)
	}
}

func (a *Applier) noteCheckpoints(w *Work) {
	for entity, highs := range w.highs {
		a.Store.NoteCheckpoints(entity, w.batch.UID, highs)
	}
}

// Batch is one fetched batch of one entity, prepared by the pipeline.
type Batch struct {
	// Entity is the catalog entity of the consumer; nil for messages on subjects no
	// catalog entity owns, which can only become dead letters.
	Entity *catalog.Entity
	// Catalog and Rules are what the batch was prepared with; children released by
	// the batch's parents are prepared with them too.
	Catalog *catalog.Catalog
	Rules   *mapping.Set
	// BatchUID is the sync_batches row the batch is counted in (created if new).
	BatchUID uuid.UUID
	Source   event.Source
	// NewBatch is true until a transaction counted in BatchUID has committed: the
	// sync_batches row is created first, as the rows written reference it.
	NewBatch   bool
	Replica    string
	Deliveries []pipeline.Delivery
	Prepared   pipeline.Prepared
	// IsolateTimeouts is set when the batch kept timing out: its writes are then
	// split like rejected rows, under a statement timeout of their own, so that
	// the rows to blame become dead letters and the rest commits.
	IsolateTimeouts bool
	// DeferRecheck leaves the re-check of parents and children after the commit
	// to the caller (Result.Recheck), so that the batch's messages are acked
	// without waiting for it.
	DeferRecheck bool
}

// UnknownEntity names, in sync_batches, the work on subjects no entity owns.
const UnknownEntity = "unknown"

func (b Batch) entityName() string {
	if b.Entity == nil {
		return UnknownEntity
	}
	return b.Entity.Name
}

func (b Batch) row() BatchRow {
	src := b.Catalog.SourceSystem
	for _, c := range b.Prepared.Candidates {
		if c.Record.SourceSystem != "" {
			src = c.Record.SourceSystem
			break
		}
	}
	return BatchRow{UID: b.BatchUID, Entity: b.entityName(), SourceSystem: src, SyncType: b.Source.SyncType, Replica: b.Replica}
}

// Result is what happened to every delivery of a committed batch.
type Result struct {
	Outcomes []pipeline.Outcome // by delivery index
	// Counts counts the outcomes of the deliveries, and in Released the parked
	// children the batch's parents released (whatever became of them).
	Counts pipeline.Counts
	// Took is how long the batch took to write, retries included (set by the caller).
	Took time.Duration
	// Inverted counts, by entity, realtime events judged stale although published
	// after the applied version (pipeline.Decision.Inverted).
	Inverted map[string]int64
	// Recheck, with Batch.DeferRecheck, is the re-check after the commit still
	// to run (nil when there is none): children waiting for the parents the batch
	// applied, or for the parents of the children it parked, whose parents are
	// applied by then are released. Should it never run (a crash), the sweeper
	// releases them.
	Recheck func(ctx context.Context)
}

// ApplyBatch writes a prepared batch in one transaction: it reads the ledger rows of
// the batch's keys, lets the pipeline decide, parks children whose parents are
// missing, writes target and ledger set-based in one lock order, their guards
// deciding against what committed since the read (isolating rows the target rejects),
// applies the children the batch's parents release, records dead letters and counts
// the batch. After the commit it hands the highest rowversions to the checkpointer
// and re-checks parents and children. An error means nothing was committed; its
// kind (errors.go) says whether the rows or the database are to blame.
//
// A row the target rejects is isolated within the transaction (writeIsolated).
// Should a rejected row's error escape that (the bridge tables refusing it, or a
// child released by the batch), the batch is written again with every record
// under a savepoint of its own, so that only the records to blame fail.
func (a *Applier) ApplyBatch(ctx context.Context, b Batch) (Result, error) {
	if b.Entity == nil && len(b.Prepared.Candidates) > 0 {
		return Result{}, fmt.Errorf("apply: a batch without an entity can only hold failures")
	}
	iso := isolation{timeouts: b.IsolateTimeouts, records: b.IsolateTimeouts}
	res, err := a.applyBatch(ctx, b, iso)
	if err != nil && !iso.records && iso.blames(err) {
		iso.records = true
		res, err = a.applyBatch(ctx, b, iso)
	}
	return res, err
}

func (a *Applier) applyBatch(ctx context.Context, b Batch, iso isolation) (Result, error) {
	var (
		res Result
		w   *Work
	)
	err := a.Store.InTx(ctx, func(tx Tx) error {
		w = a.Work(tx, b.row(), b.Catalog, b.Rules)
		w.iso = iso
		if iso.timeouts {
			if err := tx.SetStatementTimeout(ctx, a.cfg.IsolationTimeout); err != nil {
				return err
			}
		}
		res = Result{Outcomes: make([]pipeline.Outcome, len(b.Deliveries))}
		if b.NewBatch {
			if err := tx.CountBatch(ctx, w.batch, pipeline.Counts{}, false); err != nil {
				return err
			}
		}
		for _, f := range b.Prepared.Failures {
			w.DeadLetter(f, b.Deliveries[f.Index])
			res.Outcomes[f.Index] = pipeline.Failed
		}
		for _, i := range b.Prepared.Superseded {
			res.Outcomes[i] = pipeline.Stale
		}
		if b.Entity != nil {
			outcomes, failures, err := w.apply(ctx, b.Entity, b.Deliveries, b.Prepared.Candidates)
			if err != nil {
				return err
			}
			for i, o := range outcomes {
				res.Outcomes[i] = o
			}
			for _, f := range failures {
				w.DeadLetter(f, b.Deliveries[f.Index])
				res.Outcomes[f.Index] = pipeline.Failed
			}
		}
		if b.Prepared.Inverted > 0 {
			w.inverted[b.entityName()] += int64(b.Prepared.Inverted)
		}
		res.Inverted = w.inverted
		res.Counts = pipeline.Counts{Fetched: int64(len(b.Deliveries)), Normalized: int64(b.Prepared.Normalized),
			Mapped: int64(b.Prepared.Mapped)}
		for _, o := range res.Outcomes {
			res.Counts.Add(o)
		}
		if !res.Counts.Balanced() {
			return fmt.Errorf("apply: batch counts do not add up: %+v", res.Counts)
		}
		if err := w.Finish(ctx, res.Counts, false); err != nil {
			return err
		}
		res.Counts.Released = w.released
		return nil
	})
	if err != nil {
		return res, err
	}
	if !b.DeferRecheck {
		a.Committed(ctx, w)
		return res, nil
	}
	a.log(w)
	a.noteCheckpoints(w)
	if len(w.recheck) > 0 {
		res.Recheck = func(ctx context.Context) { a.recheckAfterCommit(ctx, w) }
	}
	return res, nil
}

// RecordDeadLetters writes dead letters that belong to no batch, such as the
// messages JetStream gave up delivering. A message that already has an unresolved
// dead letter updates it.
func (a *Applier) RecordDeadLetters(ctx context.Context, cat *catalog.Catalog, items []DeadLetter) error {
	var w *Work
	err := a.Store.InTx(ctx, func(tx Tx) error {
		w = a.Work(tx, BatchRow{}, cat, nil)
		for _, it := range items {
			w.DeadLetter(it.Failure, it.Delivery)
		}
		return w.flushDeadLetters(ctx)
	})
	if err == nil {
		a.log(w)
	}
	return err
}
