package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/normalize"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Backoff says when something is tried again: after FirstRetry, then twice as
// long each time up to MaxDelay, MaxRetries times in all.
type Backoff struct {
	FirstRetry, MaxDelay time.Duration
	MaxRetries           int
}

// or fills the zero fields from def.
func (b Backoff) or(def Backoff) Backoff {
	if b.FirstRetry <= 0 {
		b.FirstRetry = def.FirstRetry
	}
	if b.MaxDelay <= 0 {
		b.MaxDelay = def.MaxDelay
	}
	if b.MaxRetries <= 0 {
		b.MaxRetries = def.MaxRetries
	}
	return b
}

// delay returns the wait before try number retry+1.
func (b Backoff) delay(retry int) time.Duration {
	d := b.FirstRetry
	for i := 0; i < retry && d < b.MaxDelay; i++ {
		d *= 2
	}
	return min(d, b.MaxDelay)
}

// ParkPolicy says how long parked children wait for their parents: the sweeper
// re-checks a child after FirstRetry (default 30s), doubling up to MaxDelay
// (default 1h), and after MaxRetries re-checks (default 10) it becomes an orphan.
type ParkPolicy = Backoff

var parkDefaults = Backoff{FirstRetry: 30 * time.Second, MaxDelay: time.Hour, MaxRetries: 10}

// deadLetter is a failure with the delivery it came from.
type deadLetter struct {
	pipeline.Failure
	delivery pipeline.Delivery
}

// txWork is what one transaction applies: a batch, and the children its parents
// release, level by level.
type txWork struct {
	s        *Store
	tx       pgx.Tx
	batchUID uuid.UUID
	cat      *catalog.Catalog
	rules    *mapping.Set
	dead     []deadLetter
	released int64
	// recheck holds the parents this transaction applied and the parents its parked
	// children wait for: after the commit, children waiting for any of them whose
	// parent is applied by then are released (releaseAfterCommit).
	recheck []parentKey
	highs   map[string]map[string]event.RowVersion // entity -> source system -> highest
	// orphaned holds the orphan dead letters written by SQL (the sweeper moves
	// them from pending_children), for the log after the commit.
	orphaned []deadLetter
	// inverted counts, by entity, realtime events published after the applied
	// version and judged stale.
	inverted map[string]int64
	// isolate says which errors are blamed on the records being applied rather
	// than ending the transaction (see isolates).
	isolate isolation
}

// isolation says how far a transaction goes to find the records to blame for an
// error.
type isolation struct {
	// timeouts makes a statement or lock timeout count like a rejected row: the
	// batch kept timing out, so its writes are split until the rows to blame are
	// found (they become dead letters at stage write).
	timeouts bool
	// records splits the records themselves (not only their target writes) under
	// savepoints when an error escapes: a row rejected by the bridge tables, or in
	// a release cascade.
	records bool
	// anyError blames every error but an unavailable database or a conflict on
	// the records (the dead-letter retry worker: one record that fails in an
	// unforeseen way must not hold back the others for ever).
	anyError bool
}

func (s *Store) newWork(tx pgx.Tx, batchUID uuid.UUID, cat *catalog.Catalog, rules *mapping.Set) *txWork {
	return &txWork{s: s, tx: tx, batchUID: batchUID, cat: cat, rules: rules, highs: map[string]map[string]event.RowVersion{},
		inverted: map[string]int64{}}
}

func (w *txWork) deadLetter(f pipeline.Failure, d pipeline.Delivery) {
	w.dead = append(w.dead, deadLetter{Failure: f, delivery: d})
}

// isolates reports whether err, from applying some records under a savepoint, is
// to be blamed on those records (and the work split to find them) rather than end
// the transaction.
func (w *txWork) isolates(err error) bool {
	kind := classify(err)
	switch {
	case errors.Is(kind, context.Canceled), errors.Is(kind, context.DeadlineExceeded):
		return false
	case errors.Is(kind, ErrRowRejected):
		return true
	case errors.Is(kind, ErrTimeout):
		return w.isolate.timeouts || w.isolate.anyError
	case errors.Is(kind, ErrUnavailable), errors.Is(kind, ErrConflict):
		return false
	}
	return w.isolate.anyError
}

// workMark is how far a txWork had got; restore goes back to it when a savepoint
// is rolled back.
type workMark struct {
	dead, recheck, orphaned int
	released                int64
	highs                   map[string]map[string]event.RowVersion
	inverted                map[string]int64
}

func (w *txWork) mark() workMark {
	highs := make(map[string]map[string]event.RowVersion, len(w.highs))
	for e, m := range w.highs {
		highs[e] = maps.Clone(m)
	}
	return workMark{dead: len(w.dead), recheck: len(w.recheck), orphaned: len(w.orphaned), released: w.released, highs: highs,
		inverted: maps.Clone(w.inverted)}
}

func (w *txWork) restore(m workMark) {
	w.dead, w.recheck, w.orphaned = w.dead[:m.dead], w.recheck[:m.recheck], w.orphaned[:m.orphaned]
	w.released, w.highs, w.inverted = m.released, m.highs, m.inverted
}

// savepoint runs fn under a savepoint, undoing what fn did to the database and to
// w when it fails.
func (w *txWork) savepoint(ctx context.Context, fn func() error) error {
	sp, err := w.tx.Begin(ctx)
	if err != nil {
		return err
	}
	m := w.mark()
	if err := fn(); err != nil {
		w.restore(m)
		if rbErr := sp.Rollback(ctx); rbErr != nil {
			return rbErr
		}
		return err
	}
	return sp.Commit(ctx)
}

// apply decides and writes candidates of entity e (ds are the deliveries the
// candidates index into), isolating the records to blame when the transaction's
// isolation says so. It returns each candidate's outcome by delivery index, and
// the candidates that failed (to be dead-lettered, or, for a retry, recorded on
// their dead letter); children it releases are handled in full.
func (w *txWork) apply(ctx context.Context, e *catalog.Entity, ds []pipeline.Delivery, cands []pipeline.Candidate) (map[int]pipeline.Outcome, []pipeline.Failure, error) {
	if !w.isolate.records {
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
		case !w.isolates(err):
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
func (w *txWork) applyEntity(ctx context.Context, e *catalog.Entity, ds []pipeline.Delivery, cands []pipeline.Candidate) (map[int]pipeline.Outcome, []pipeline.Failure, error) {
	t, err := w.s.target(e.Name)
	if err != nil {
		return nil, nil, err
	}
	applied, err := lockLedger(ctx, w.tx, e.Name, cands)
	if err != nil {
		return nil, nil, err
	}
	decisions := pipeline.Decide(cands, applied)
	if len(e.Parents) > 0 {
		if err := w.park(ctx, e, ds, decisions); err != nil {
			return nil, nil, err
		}
	}
	failures, err := w.writeIsolated(ctx, t, decisions)
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
	if len(w.cat.Children(e.Name)) > 0 {
		var keys []parentKey
		for _, d := range decisions {
			if d.Ledger && d.Record.Op == event.OpUpsert {
				keys = append(keys, parentKey{e.Name, d.Record.BKHash})
			}
		}
		if err := w.release(ctx, keys); err != nil {
			return nil, nil, err
		}
	}
	return outcomes, failures, nil
}

func (w *txWork) noteHigh(entity string, r normalize.Record) {
	m := w.highs[entity]
	if m == nil {
		m = map[string]event.RowVersion{}
		w.highs[entity] = m
	}
	if h, ok := m[r.SourceSystem]; !ok || r.RowVersion.Ord > h.Ord {
		m[r.SourceSystem] = r.RowVersion
	}
}

// finish writes the transaction's dead letters and adds counts (and the children
// it released) to its batch row, closing the row when done is set.
func (w *txWork) finish(ctx context.Context, counts pipeline.Counts, done bool) error {
	counts.Released = w.released
	if err := w.flushDeadLetters(ctx); err != nil {
		return err
	}
	return addCounts(ctx, w.tx, w.batchUID, counts, done)
}

// committed is what follows a commit: the log of its dead letters, the
// checkpoints, and the re-check of parents and children (see releaseAfterCommit).
func (w *txWork) committed(ctx context.Context) {
	w.logDeadLetters()
	w.noteCheckpoints()
	w.s.releaseAfterCommit(ctx, w.cat, w.rules, w.batchUID, w.recheck)
}

func (w *txWork) noteCheckpoints() {
	for entity, highs := range w.highs {
		w.s.checkpoints.note(entity, w.batchUID, highs)
	}
}

type parentKey struct{ entity, hash string }

// keyArrays returns keys as the two arrays the statements take.
func keyArrays(keys []parentKey) (entities, hashes []string) {
	entities, hashes = make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		entities[i], hashes[i] = k.entity, k.hash
	}
	return entities, hashes
}

const presentParentsSQL = `
SELECT r.entity_name, r.bk_hash
FROM bridge.synced_records r
JOIN unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash) USING (entity_name, bk_hash)
WHERE NOT r.deleted`

// present returns which of keys are applied (in the ledger and not deleted). It
// takes no lock: a parent applied by another transaction at the same moment is
// caught by the re-check after commit (see releaseAfterCommit).
func (w *txWork) present(ctx context.Context, keys []parentKey) (map[parentKey]bool, error) {
	entities, hashes := keyArrays(keys)
	rows, err := w.tx.Query(ctx, presentParentsSQL, entities, hashes)
	if err != nil {
		return nil, err
	}
	present := map[parentKey]bool{}
	for rows.Next() {
		var k parentKey
		if err := rows.Scan(&k.entity, &k.hash); err != nil {
			return nil, err
		}
		present[k] = true
	}
	return present, rows.Err()
}

// park moves every upsert whose parent (any the catalog names, in catalog order) is
// not applied into pending_children, under its first missing parent.
func (w *txWork) park(ctx context.Context, e *catalog.Entity, ds []pipeline.Delivery, decisions []pipeline.Decision) error {
	var check []int
	keys := map[parentKey]bool{}
	for i, d := range decisions {
		if d.Target && d.Record.Op == event.OpUpsert && len(d.Record.Parents) > 0 {
			check = append(check, i)
			for _, p := range d.Record.Parents {
				keys[parentKey{p.Entity, p.BKHash}] = true
			}
		}
	}
	if len(check) == 0 {
		return nil
	}
	present, err := w.present(ctx, sortedKeys(keys))
	if err != nil {
		return err
	}
	var parked []parkRow
	for _, i := range check {
		d := &decisions[i]
		for _, p := range d.Record.Parents {
			if present[parentKey{p.Entity, p.BKHash}] {
				continue
			}
			parked = append(parked, parkRow{decision: i, parent: p, delivery: ds[d.Index]})
			w.recheck = append(w.recheck, parentKey{p.Entity, p.BKHash})
			d.Outcome, d.Ledger, d.Target = pipeline.Parked, false, false
			break
		}
	}
	return w.insertParked(ctx, e, decisions, parked)
}

type parkRow struct {
	decision int
	parent   normalize.ParentRef
	delivery pipeline.Delivery
}

var parkSQL = `
INSERT INTO bridge.pending_children AS p
    (uid, batch_uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key, child_payload, child_raw,
     child_rowversion, rowversion_ord, source_stream, stream, subject, stream_seq, payload_hash, published_at,
     max_retries, next_retry_at)
SELECT u.uid, $1, $2, u.child_hash, u.parent_entity, u.parent_hash, u.parent_key::jsonb, u.payload::jsonb, u.raw,
       u.rowversion, u.ord, u.src, u.stream, u.subject, u.seq, u.hash, u.published, $3, now() + $4::interval
FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[], $12::text[],
            $13::bigint[], $14::text[], $15::text[], $16::text[], $17::bigint[], $18::bytea[], $19::timestamptz[])
    AS u (uid, child_hash, parent_entity, parent_hash, parent_key, payload, raw, rowversion, ord, src, stream, subject,
          seq, hash, published)
ORDER BY u.child_hash
ON CONFLICT (child_entity, child_bk_hash) DO UPDATE SET
    batch_uid = excluded.batch_uid, parent_entity = excluded.parent_entity, parent_bk_hash = excluded.parent_bk_hash,
    parent_key = excluded.parent_key, child_payload = excluded.child_payload, child_raw = excluded.child_raw,
    child_rowversion = excluded.child_rowversion, rowversion_ord = excluded.rowversion_ord,
    source_stream = excluded.source_stream, stream = excluded.stream, subject = excluded.subject,
    stream_seq = excluded.stream_seq, payload_hash = excluded.payload_hash, published_at = excluded.published_at,
    retry_count = 0, next_retry_at = excluded.next_retry_at
WHERE ` + supersedesSQL("p") + `
RETURNING child_bk_hash`

// insertParked writes the parked rows, the event's bytes exactly as received; one
// row per child key, so a version older than the one already parked is stale.
func (w *txWork) insertParked(ctx context.Context, e *catalog.Entity, decisions []pipeline.Decision, rows []parkRow) error {
	if len(rows) == 0 {
		return nil
	}
	n := len(rows)
	uids := make([]uuid.UUID, n)
	hashes, pents, phashes, pkeys, rvs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	payloads := make([]*string, n)
	raws := make([][]byte, n)
	srcs, streams, subjects := make([]string, n), make([]string, n), make([]string, n)
	ords, seqs := make([]int64, n), make([]int64, n)
	phash := make([][]byte, n)
	published := make([]*time.Time, n)
	for j, r := range rows {
		d := decisions[r.decision]
		key, _ := json.Marshal(r.parent.Key)
		uids[j] = w.s.NewUID()
		hashes[j], pents[j], phashes[j], pkeys[j] = d.Record.BKHash, r.parent.Entity, r.parent.BKHash, string(key)
		payloads[j], raws[j] = parkablePayload(r.delivery.Data), r.delivery.Data
		rvs[j], ords[j] = d.Record.RowVersion.Text, d.Record.RowVersion.Ord
		srcs[j], streams[j], subjects[j], seqs[j] = d.Version.Source.Name, r.delivery.Source.Stream, sanitizeText(r.delivery.Subject), int64(d.Version.Seq)
		phash[j] = d.PayloadHash
		if !r.delivery.Published.IsZero() {
			at := r.delivery.Published
			published[j] = &at
		}
	}
	policy := w.s.cfg.Park
	q, err := w.tx.Query(ctx, parkSQL, w.batchUID, e.Name, policy.MaxRetries, policy.FirstRetry,
		uids, hashes, pents, phashes, pkeys, payloads, raws, rvs, ords, srcs, streams, subjects, seqs, phash, published)
	if err != nil {
		return err
	}
	won, err := pgx.CollectRows(q, pgx.RowTo[string])
	if err != nil {
		return err
	}
	accepted := map[string]bool{}
	for _, h := range won {
		accepted[h] = true
	}
	for _, r := range rows {
		if d := &decisions[r.decision]; !accepted[d.Record.BKHash] {
			d.Outcome = pipeline.Stale // a newer version of this child is already parked
		}
	}
	return nil
}

// applyDeliveries prepares deliveries of any entities and applies them, entity by
// entity in catalog order; failed receives each failure (its Index is into ds).
// It returns every delivery's outcome.
func (w *txWork) applyDeliveries(ctx context.Context, ds []pipeline.Delivery, failed func(pipeline.Failure)) ([]pipeline.Outcome, error) {
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

// writeIsolated writes the decisions under a savepoint. When the target rejects some
// rows (see isolates), it rolls the savepoint back and bisects, so that only the
// rows to blame become dead letters (stage write) and the rest is written.
// Decisions are updated in place: a ledger write that lost a race becomes stale, a
// rejected row becomes failed.
func (w *txWork) writeIsolated(ctx context.Context, t *target, decisions []pipeline.Decision) ([]pipeline.Failure, error) {
	var writes []int
	for i, d := range decisions {
		if d.Ledger {
			writes = append(writes, i)
		}
	}
	var failures []pipeline.Failure
	var run func(idx []int) error
	run = func(idx []int) error {
		if len(idx) == 0 {
			return nil
		}
		sp, err := w.tx.Begin(ctx)
		if err != nil {
			return err
		}
		err = writeOnce(ctx, sp, t, w.batchUID, decisions, idx)
		if err == nil {
			return sp.Commit(ctx)
		}
		if rbErr := sp.Rollback(ctx); rbErr != nil {
			return rbErr
		}
		if !w.isolates(err) {
			return err
		}
		if len(idx) == 1 {
			d := &decisions[idx[0]]
			reason := fmt.Errorf("target %s rejected the row: %v", t.entity.Target.QualifiedName(), err)
			if !errors.Is(classify(err), ErrRowRejected) {
				reason = fmt.Errorf("writing the row to %s kept timing out (the batch timed out repeatedly, and this row alone timed out again): %v", t.entity.Target.QualifiedName(), err)
			}
			failures = append(failures, pipeline.Failure{
				Index: d.Index, Stage: pipeline.StageWrite, Entity: d.Record.Entity, BKHash: d.Record.BKHash,
				Normalized: d.Record.Fields, Err: reason,
			})
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
		return nil, err
	}
	return failures, nil
}

// parkablePayload returns the event as jsonb will take it, for reading the parked
// row in psql: the bytes as they are when they are valid UTF-8 without a \u
// escape (nearly always), else re-encoded by jsonbText; nil when the event has no
// JSONB form (a NUL character). The bytes themselves are kept in child_raw.
func parkablePayload(body []byte) *string {
	if utf8.Valid(body) && !bytes.Contains(body, []byte(`\u`)) {
		s := string(body)
		return &s
	}
	return jsonbText(body)
}

// sortedKeys returns the set's keys in (entity, hash) order: statements that lock
// rows by key take them in the same order in every transaction.
func sortedKeys(set map[parentKey]bool) []parentKey {
	return slices.SortedFunc(maps.Keys(set), func(a, b parentKey) int {
		if c := strings.Compare(a.entity, b.entity); c != 0 {
			return c
		}
		return strings.Compare(a.hash, b.hash)
	})
}
