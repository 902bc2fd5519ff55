package apply

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/normalize"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Work is what one transaction applies: a batch, and the children its parents
// release, level by level. It decides; its Tx carries out.
type Work struct {
	tx    Tx
	cfg   Config
	batch BatchRow
	cat   *catalog.Catalog
	rules *mapping.Set
	iso   isolation

	dead     []DeadLetter
	released int64
	// recheck holds the parents this transaction applied and the parents its parked
	// children wait for: after the commit, children waiting for any of them whose
	// parent is applied by then are released (Applier.Committed).
	recheck []Key
	highs   map[string]map[string]event.RowVersion // entity -> source system -> highest
	// inverted counts, by entity, realtime events published after the applied
	// version and judged stale.
	inverted map[string]int64
	// logged holds dead letters written by other means (the sweeper's orphans),
	// for the log after the commit.
	logged []DeadLetter
}

// IsolateRecords makes the work split the records themselves under savepoints
// when an error they are to blame for escapes the isolation of the target writes.
func (w *Work) IsolateRecords() { w.iso.records = true }

// BlameAnyError makes the work blame every error but an unavailable database or a
// conflict on the records (the dead-letter retry worker).
func (w *Work) BlameAnyError() { w.iso.anyError = true }

// Blames reports whether the work's isolation blames err on the records.
func (w *Work) Blames(err error) bool { return w.iso.blames(err) }

// DeadLetter records a failure, written at Finish.
func (w *Work) DeadLetter(f pipeline.Failure, d pipeline.Delivery) {
	dl := DeadLetter{Failure: f, Delivery: d}
	if f.Stage.Retried() {
		after := w.cfg.RetryFirst
		dl.RetryAfter, dl.MaxRetries = &after, w.cfg.RetryMax
	} else {
		dl.MaxRetries = w.cfg.RetryMax
	}
	w.dead = append(w.dead, dl)
}

// Recheck adds parents to re-check after the commit.
func (w *Work) Recheck(keys ...Key) { w.recheck = append(w.recheck, keys...) }

// Logged notes dead letters written by other means, for the log after the commit.
func (w *Work) Logged(dead ...DeadLetter) { w.logged = append(w.logged, dead...) }

// mark is how far a Work had got; restore goes back to it when a savepoint is
// rolled back.
type mark struct {
	dead, recheck, logged int
	released              int64
	highs                 map[string]map[string]event.RowVersion
	inverted              map[string]int64
}

func (w *Work) mark() mark {
	highs := make(map[string]map[string]event.RowVersion, len(w.highs))
	for e, m := range w.highs {
		highs[e] = maps.Clone(m)
	}
	return mark{dead: len(w.dead), recheck: len(w.recheck), logged: len(w.logged), released: w.released, highs: highs,
		inverted: maps.Clone(w.inverted)}
}

func (w *Work) restore(m mark) {
	w.dead, w.recheck, w.logged = w.dead[:m.dead], w.recheck[:m.recheck], w.logged[:m.logged]
	w.released, w.highs, w.inverted = m.released, m.highs, m.inverted
}

// savepoint runs fn under a savepoint, undoing what fn did to the database and to
// w when it fails.
func (w *Work) savepoint(ctx context.Context, fn func() error) error {
	m := w.mark()
	err := w.tx.Savepoint(ctx, fn)
	if err != nil {
		w.restore(m)
	}
	return err
}

// apply decides and writes candidates of entity e (ds are the deliveries the
// candidates index into), isolating the records to blame when the work's isolation
// says so. It returns each candidate's outcome by delivery index, and the
// candidates that failed (to be dead-lettered, or, for a retry, recorded on their
// dead letter); children it releases are handled in full.
func (w *Work) apply(ctx context.Context, e *catalog.Entity, ds []pipeline.Delivery, cands []pipeline.Candidate) (map[int]pipeline.Outcome, []pipeline.Failure, error) {
	if !w.iso.records {
		return w.applyEntity(ctx, e, ds, cands)
	}
	outcomes := make(map[int]pipeline.Outcome, len(cands))
	var failures []pipeline.Failure
	var run func(cs []pipeline.Candidate) error
	run = func(cs []pipeline.Candidate) error {
		if len(cs) == 0 {
			return nil
		}
		var out map[int]pipeline.Outcome
		var fs []pipeline.Failure
		err := w.savepoint(ctx, func() (err error) {
			out, fs, err = w.applyEntity(ctx, e, ds, cs)
			return err
		})
		switch {
		case err == nil:
			maps.Copy(outcomes, out)
			failures = append(failures, fs...)
			return nil
		case !w.iso.blames(err):
			return err
		case len(cs) == 1:
			c := cs[0]
			failures = append(failures, pipeline.Failure{Index: c.Index, Stage: pipeline.StageWrite, Entity: e.Name, BKHash: c.Record.BKHash,
				Normalized: c.Record.Fields, Err: fmt.Errorf("applying the record failed: %v", err)})
			outcomes[c.Index] = pipeline.Failed
			return nil
		}
		mid := len(cs) / 2
		if err := run(cs[:mid]); err != nil {
			return err
		}
		return run(cs[mid:])
	}
	if err := run(cands); err != nil {
		return nil, nil, err
	}
	return outcomes, failures, nil
}

// applyEntity decides and writes candidates of entity e: the work of apply, with
// only the target writes isolated (writeIsolated).
func (w *Work) applyEntity(ctx context.Context, e *catalog.Entity, ds []pipeline.Delivery, cands []pipeline.Candidate) (map[int]pipeline.Outcome, []pipeline.Failure, error) {
	hashes := make([]string, len(cands))
	parents := map[Key]bool{}
	for i, c := range cands {
		hashes[i] = c.Record.BKHash
		if c.Record.Op == event.OpUpsert {
			for _, p := range c.Record.Parents {
				parents[Key{p.Entity, p.BKHash}] = true
			}
		}
	}
	// The parents of every upsert are looked up with the ledger, in its round
	// trip: those of upserts that turn out stale are looked up for nothing.
	applied, present, err := w.tx.ReadLedger(ctx, e.Name, hashes, SortedKeys(parents))
	if err != nil {
		return nil, nil, err
	}
	decisions := pipeline.Decide(cands, applied)
	if len(e.Parents) > 0 {
		if err := w.park(ctx, e, ds, decisions, present); err != nil {
			return nil, nil, err
		}
	}
	// A parent's children are released in the write's round trip; should the
	// write not go through at the first try, after it (release).
	var release *ReleaseAfter
	if len(w.cat.Children(e.Name)) > 0 {
		if keys := upserted(e, decisions); len(keys) > 0 {
			release = &ReleaseAfter{Parents: keys, Limit: ReleaseLimit, MaxBytes: ReleaseBytes}
		}
	}
	failures, took, err := w.writeIsolated(ctx, e, decisions, release)
	if err != nil {
		return nil, nil, err
	}
	outcomes := make(map[int]pipeline.Outcome, len(decisions))
	for _, d := range decisions {
		outcomes[d.Index] = d.Outcome
		if d.Ledger {
			w.noteHigh(e.Name, d.Record)
		}
		if d.Inverted {
			w.inverted[e.Name]++
		}
	}
	switch {
	case took != nil:
		err = w.applyRelease(ctx, release.Parents, took.Released, took.More)
	case release != nil:
		// The first write's release held the children of all of these parents
		// until its rollback: another transaction's re-check after its commit
		// may have skipped them (SKIP LOCKED), a parent that lost the race to
		// it included. This one re-checks them all after its own commit.
		w.recheck = append(w.recheck, release.Parents...)
		err = w.release(ctx, upserted(e, decisions))
	}
	if err != nil {
		return nil, nil, err
	}
	return outcomes, failures, nil
}

// upserted returns the keys of the upserts among decisions that write the
// ledger: the parents whose children to release.
func upserted(e *catalog.Entity, decisions []pipeline.Decision) []Key {
	var keys []Key
	for _, d := range decisions {
		if d.Ledger && d.Record.Op == event.OpUpsert {
			keys = append(keys, Key{e.Name, d.Record.BKHash})
		}
	}
	return keys
}

func (w *Work) noteHigh(entity string, r normalize.Record) {
	m := w.highs[entity]
	if m == nil {
		m = map[string]event.RowVersion{}
		w.highs[entity] = m
	}
	if h, ok := m[r.SourceSystem]; !ok || r.RowVersion.Ord > h.Ord {
		m[r.SourceSystem] = r.RowVersion
	}
}

// park moves every upsert whose parent (any the catalog names, in catalog order)
// is not applied (not in present) into the queue, under its first missing
// parent; a version older than the one already parked is stale.
func (w *Work) park(ctx context.Context, e *catalog.Entity, ds []pipeline.Delivery, decisions []pipeline.Decision, present map[Key]bool) error {
	var check []int
	for i, d := range decisions {
		// An unchanged payload at a newer version is checked too: the version
		// read may have been deleted since, and the parent with it.
		if d.Target && d.Record.Op == event.OpUpsert && len(d.Record.Parents) > 0 {
			check = append(check, i)
		}
	}
	if len(check) == 0 {
		return nil
	}
	var rows []ParkRow
	var parked []int
	for _, i := range check {
		d := &decisions[i]
		for _, p := range d.Record.Parents {
			if present[Key{p.Entity, p.BKHash}] {
				continue
			}
			rows = append(rows, ParkRow{Child: d.Record, Version: d.Version, Parent: p, Delivery: ds[d.Index]})
			parked = append(parked, i)
			w.recheck = append(w.recheck, Key{p.Entity, p.BKHash})
			d.Outcome, d.Ledger, d.Target = pipeline.Parked, false, false
			break
		}
	}
	if len(rows) == 0 {
		return nil
	}
	accepted, err := w.tx.Park(ctx, w.batch.UID, e.Name, rows, w.cfg.ParkFirstRetry, w.cfg.ParkMaxRetries)
	if err != nil {
		return err
	}
	for _, i := range parked {
		if d := &decisions[i]; !accepted[d.Record.BKHash] {
			d.Outcome = pipeline.Stale // a newer version of this child is already parked
		}
	}
	return nil
}

// ApplyDeliveries prepares deliveries of any entities and applies them, entity by
// entity in catalog order; failed receives each failure (its Index is into ds).
// It returns every delivery's outcome.
func (w *Work) ApplyDeliveries(ctx context.Context, ds []pipeline.Delivery, failed func(pipeline.Failure)) ([]pipeline.Outcome, error) {
	outcomes := make([]pipeline.Outcome, len(ds))
	prepared := pipeline.Preparer{Catalog: w.cat, Rules: w.rules}.Prepare(ds)
	for _, f := range prepared.Failures {
		failed(f)
		outcomes[f.Index] = pipeline.Failed
	}
	for _, i := range prepared.Superseded {
		outcomes[i] = pipeline.Stale
	}
	byEntity := map[string][]pipeline.Candidate{}
	for _, c := range prepared.Candidates {
		byEntity[c.Record.Entity] = append(byEntity[c.Record.Entity], c)
	}
	for _, name := range w.cat.Names() {
		cands := byEntity[name]
		if len(cands) == 0 {
			continue
		}
		e, _ := w.cat.Entity(name)
		out, failures, err := w.apply(ctx, e, ds, cands)
		if err != nil {
			return nil, err
		}
		for i, o := range out {
			outcomes[i] = o
		}
		for _, f := range failures {
			failed(f)
			outcomes[f.Index] = pipeline.Failed
		}
	}
	return outcomes, nil
}

// writeIsolated writes the decisions that touch the ledger under a savepoint. When
// the target rejects some rows (see isolation.blames), it rolls the savepoint back
// and bisects, so that only the rows to blame become dead letters (stage write)
// and the rest is written. Decisions are updated: a ledger write that lost a race
// becomes stale, a rejected row failed.
//
// The first write carries release (when set); took is what it released, nil
// when it did not go through at once (the release was rolled back with it).
func (w *Work) writeIsolated(ctx context.Context, e *catalog.Entity, decisions []pipeline.Decision, release *ReleaseAfter) (failures []pipeline.Failure, took *Written, err error) {
	var writes []int
	for i, d := range decisions {
		if d.Ledger {
			writes = append(writes, i)
		}
	}
	held := 0
	var run func(idx []int) error
	run = func(idx []int) error {
		if len(idx) == 0 {
			return nil
		}
		var (
			lost    []int
			written Written
		)
		rel := release
		release = nil
		err := w.tx.Savepoint(ctx, func() (err error) {
			written, lost, err = w.write(ctx, e, decisions, idx, rel)
			return err
		})
		if err == nil && rel != nil {
			took = &written
		}
		if errors.Is(err, ErrDeleteHeld) && held < maxHeldRetries {
			// The rollback let the holder go on; this time the write waits
			// for the row in its turn.
			held++
			return run(idx)
		}
		if raced, ok := errors.AsType[*lostRace](err); ok {
			// The savepoint undid the target rows of keys whose ledger rows
			// lost; they are stale, and the rest is written again.
			for _, i := range raced.idx {
				d := &decisions[i]
				d.Outcome, d.Ledger, d.Target = pipeline.Stale, false, false
			}
			return run(slices.DeleteFunc(slices.Clone(idx), func(i int) bool { return slices.Contains(raced.idx, i) }))
		}
		if err == nil {
			for _, i := range lost {
				// Another replica committed a newer version of this key first.
				d := &decisions[i]
				d.Outcome, d.Ledger, d.Target = pipeline.Stale, false, false
			}
			return nil
		}
		if !w.iso.blames(err) {
			return err
		}
		if len(idx) == 1 {
			d := &decisions[idx[0]]
			reason := fmt.Errorf("target %s rejected the row: %v", e.Target.QualifiedName(), err)
			if Kind(err) != ErrRowRejected.Error() {
				reason = fmt.Errorf("writing the row to %s kept timing out (the batch timed out repeatedly, and this row alone timed out again): %v", e.Target.QualifiedName(), err)
			}
			failures = append(failures, pipeline.Failure{Index: d.Index, Stage: pipeline.StageWrite, Entity: d.Record.Entity,
				BKHash: d.Record.BKHash, Normalized: d.Record.Fields, Err: reason})
			d.Outcome, d.Ledger, d.Target = pipeline.Failed, false, false
			return nil
		}
		mid := len(idx) / 2
		if err := run(idx[:mid]); err != nil {
			return err
		}
		return run(idx[mid:])
	}
	if err := run(writes); err != nil {
		return nil, nil, err
	}
	return failures, took, nil
}

// maxHeldRetries bounds the writes tried again in one transaction after
// ErrDeleteHeld; then the error ends the transaction, held and retried.
const maxHeldRetries = 3

// write writes the rows of decisions[idx] in one Write: every target row first,
// then every ledger row, each in key order, so that two transactions writing the
// same keys, new or not, take their locks in one order and cannot deadlock. It
// returns the decisions whose ledger write lost to a newer version without a
// target row written (a delete is done only where its ledger row won), for the
// caller to mark once the write is through, or a *lostRace when a ledger row
// lost after its target row was upserted (another transaction committed the key
// first; the savepoint undoes it).
func (w *Work) write(ctx context.Context, e *catalog.Entity, decisions []pipeline.Decision, idx []int, release *ReleaseAfter) (written Written, lost []int, err error) {
	rows := make([]WriteRow, len(idx))
	for j, i := range idx {
		d := decisions[i]
		rows[j] = WriteRow{LedgerRow: LedgerRow{Record: d.Record, Version: d.Version, Deleted: d.Record.Op == event.OpDelete},
			Target: d.Target, Rewrite: d.Rewrite, Row: d.Row}
	}
	written, err = w.tx.Write(ctx, e.Name, w.batch.UID, rows, release)
	if err != nil {
		return written, nil, err
	}
	raced := &lostRace{}
	for _, i := range idx {
		switch d := decisions[i]; {
		case written.Hashes[d.Record.BKHash]:
		case d.Target && d.Record.Op == event.OpUpsert:
			raced.idx = append(raced.idx, i)
		default:
			lost = append(lost, i)
		}
	}
	if len(raced.idx) > 0 {
		return written, nil, raced
	}
	return written, lost, nil
}

// lostRace says which decisions (indexes into them) had their target rows
// written but not their ledger rows.
type lostRace struct{ idx []int }

func (l *lostRace) Error() string {
	return fmt.Sprintf("%d keys were written by another transaction first", len(l.idx))
}

// Finish adds counts (and the children the work released) to the work's batch
// row, closing it when close is set, and writes the dead letters.
func (w *Work) Finish(ctx context.Context, counts pipeline.Counts, close bool) error {
	counts.Released = w.released
	if err := w.tx.CountBatch(ctx, w.batch, counts, close); err != nil {
		return err
	}
	return w.flushDeadLetters(ctx)
}

func (w *Work) flushDeadLetters(ctx context.Context) error {
	if len(w.dead) == 0 {
		return nil
	}
	batch := &w.batch.UID
	if w.batch.UID == [16]byte{} {
		batch = nil
	}
	return w.tx.AddDeadLetters(ctx, batch, w.cat.SourceSystem, w.dead)
}

// KeysIn returns the keys of keys that are in set, in keys' order, each once.
func KeysIn(keys []Key, set map[Key]bool) []Key {
	var out []Key
	seen := map[Key]bool{}
	for _, k := range keys {
		if set[k] && !seen[k] {
			out = append(out, k)
			seen[k] = true
		}
	}
	return out
}

// SortedKeys returns the set's keys in (entity, hash) order: statements that lock
// rows by key take them in the same order in every transaction.
func SortedKeys(set map[Key]bool) []Key {
	return slices.SortedFunc(maps.Keys(set), func(a, b Key) int {
		return cmp.Or(strings.Compare(a.Entity, b.Entity), strings.Compare(a.Hash, b.Hash))
	})
}
