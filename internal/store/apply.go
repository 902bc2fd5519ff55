package store

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

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
	SyncType string // realtime or background
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
}

// UnknownEntity names, in sync_batches, the work on subjects no entity owns.
const UnknownEntity = "unknown"

func (b Batch) entityName() string {
	if b.Entity == nil {
		return UnknownEntity
	}
	return b.Entity.Name
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
}

// ApplyBatch writes a prepared batch in one transaction: it locks the ledger rows of
// the batch's keys, lets the pipeline decide, parks children whose parents are
// missing, writes ledger and target set-based (isolating rows the target rejects),
// applies the children the batch's parents release, records dead letters and counts
// the batch. After the commit it hands the highest rowversions to the checkpointer
// (see RunCheckpoints). An error means nothing was committed; its kind (errors.go)
// says whether the rows or the database are to blame.
//
// A row the target rejects is isolated within the transaction (writeIsolated).
// Should a rejected row's error escape that (the bridge tables refusing it, or a
// child released by the batch), the batch is written again with every record
// under a savepoint of its own, so that only the records to blame fail.
func (s *Store) ApplyBatch(ctx context.Context, b Batch) (Result, error) {
	if b.Entity == nil && len(b.Prepared.Candidates) > 0 {
		return Result{}, fmt.Errorf("store: a batch without an entity can only hold failures")
	}
	iso := isolation{timeouts: b.IsolateTimeouts, records: b.IsolateTimeouts}
	res, err := s.applyBatch(ctx, b, iso)
	if err != nil && !iso.records && (&txWork{isolate: iso}).isolates(err) {
		iso.records = true
		res, err = s.applyBatch(ctx, b, iso)
	}
	return res, err
}

func (s *Store) applyBatch(ctx context.Context, b Batch, iso isolation) (Result, error) {
	var (
		res Result
		w   *txWork
	)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		w = s.newWork(tx, b.BatchUID, b.Catalog, b.Rules)
		w.isolate = iso
		if iso.timeouts {
			if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, s.isolationTimeout()); err != nil {
				return err
			}
		}
		res = Result{Outcomes: make([]pipeline.Outcome, len(b.Deliveries))}
		if b.NewBatch {
			if err := countBatch(ctx, tx, b, pipeline.Counts{}); err != nil {
				return err
			}
		}
		for _, f := range b.Prepared.Failures {
			w.deadLetter(f, b.Deliveries[f.Index])
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
				w.deadLetter(f, b.Deliveries[f.Index])
				res.Outcomes[f.Index] = pipeline.Failed
			}
		}
		if b.Prepared.Inverted > 0 {
			w.inverted[b.entityName()] += int64(b.Prepared.Inverted)
		}
		res.Inverted = w.inverted
		res.Counts = pipeline.Counts{Fetched: int64(len(b.Deliveries)), Normalized: int64(b.Prepared.Normalized),
			Mapped: int64(b.Prepared.Mapped), Released: w.released}
		for _, o := range res.Outcomes {
			res.Counts.Add(o)
		}
		if !res.Counts.Balanced() {
			return fmt.Errorf("store: batch counts do not add up: %+v", res.Counts)
		}
		if err := w.flushDeadLetters(ctx); err != nil {
			return err
		}
		return countBatch(ctx, tx, b, res.Counts)
	})
	if err == nil {
		w.committed(ctx)
	}
	return res, classify(err)
}

// isolationTimeout is the statement timeout of a batch whose writes are being
// isolated: the configured one, or 30 seconds when none is.
func (s *Store) isolationTimeout() string {
	d := cmp.Or(s.cfg.StatementTimeout, 30*time.Second)
	return strconv.FormatInt(max(d.Milliseconds(), 1), 10)
}

// lockLedgerSQL joins the keys rather than testing bk_hash = ANY ($2): with a
// generic plan and a growing ledger, PostgreSQL chose a sequential scan for the
// ANY form (tens of milliseconds per batch, growing with the table); the join is
// planned as one index lookup per key.
const lockLedgerSQL = `
SELECT r.bk_hash, r.rowversion_ord, r.source_stream, r.stream_seq, r.payload_hash, r.deleted
FROM unnest($2::text[]) AS k (bk_hash)
JOIN bridge.synced_records r ON r.entity_name = $1 AND r.bk_hash = k.bk_hash
ORDER BY r.bk_hash
FOR UPDATE OF r`

// lockLedger reads and locks the ledger rows of the candidates' keys (in key order,
// so that two replicas lock in the same order).
func lockLedger(ctx context.Context, tx pgx.Tx, entity string, cands []pipeline.Candidate) (map[string]pipeline.Applied, error) {
	applied := make(map[string]pipeline.Applied, len(cands))
	if len(cands) == 0 {
		return applied, nil
	}
	hashes := make([]string, len(cands))
	for i, c := range cands {
		hashes[i] = c.Record.BKHash
	}
	rows, err := tx.Query(ctx, lockLedgerSQL, entity, hashes)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			hash, src string
			ord, seq  int64
			payload   []byte
			deleted   bool
		)
		if err := rows.Scan(&hash, &ord, &src, &seq, &payload, &deleted); err != nil {
			return nil, err
		}
		applied[hash] = pipeline.Applied{
			Version: pipeline.Version{Ord: ord, Source: event.SourceNamed(src), Seq: uint64(seq), Hash: payload},
			Deleted: deleted,
		}
	}
	return applied, rows.Err()
}

// supersedesSQL is pipeline.Supersedes in SQL, for an ON CONFLICT guard: the
// excluded row replaces the row aliased as alias when its (rowversion, realtime,
// stream sequence) is greater (a realtime version beats a backfill one of the same
// rowversion), or when it is the same event with another payload hash.
func supersedesSQL(alias string) string {
	return `((excluded.rowversion_ord, excluded.source_stream = 'realtime', excluded.stream_seq)
        > (` + alias + `.rowversion_ord, ` + alias + `.source_stream = 'realtime', ` + alias + `.stream_seq)
    OR ((excluded.rowversion_ord, excluded.source_stream, excluded.stream_seq)
        = (` + alias + `.rowversion_ord, ` + alias + `.source_stream, ` + alias + `.stream_seq)
        AND excluded.payload_hash IS DISTINCT FROM ` + alias + `.payload_hash))`
}

var upsertLedgerSQL = `
INSERT INTO bridge.synced_records AS r
    (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream,
     stream_seq, payload_hash, deleted, batch_uid)
SELECT $1, u.bk_hash, u.business_key::jsonb, u.rowversion, u.ord, u.src, u.seq, u.hash, u.deleted, $2
FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::bytea[], $10::bool[])
    AS u (bk_hash, business_key, rowversion, ord, src, seq, hash, deleted)
ORDER BY u.bk_hash
ON CONFLICT (entity_name, bk_hash) DO UPDATE SET
    business_key = excluded.business_key, rowversion = excluded.rowversion,
    rowversion_ord = excluded.rowversion_ord, source_stream = excluded.source_stream,
    stream_seq = excluded.stream_seq, payload_hash = excluded.payload_hash,
    deleted = excluded.deleted, batch_uid = excluded.batch_uid, updated_at = now()
WHERE ` + supersedesSQL("r") + `
RETURNING bk_hash`

// writeOnce writes the ledger rows of ds[idx] (guarded by the supersede rule), then
// the target rows of those the ledger accepted.
func writeOnce(ctx context.Context, tx pgx.Tx, t *target, batchUID uuid.UUID, ds []pipeline.Decision, idx []int) error {
	// Keys in order: two transactions inserting overlapping new keys take their
	// index entries in the same order and cannot deadlock.
	idx = slices.Clone(idx)
	slices.SortFunc(idx, func(a, b int) int { return strings.Compare(ds[a].Record.BKHash, ds[b].Record.BKHash) })
	n := len(idx)
	var (
		hashes   = make([]string, n)
		keys     = make([]string, n)
		versions = make([]string, n)
		ords     = make([]int64, n)
		srcs     = make([]string, n)
		seqs     = make([]int64, n)
		payloads = make([][]byte, n)
		deleted  = make([]bool, n)
	)
	for j, i := range idx {
		d := ds[i]
		key, _ := json.Marshal(d.Record.Key)
		hashes[j], keys[j] = d.Record.BKHash, string(key)
		versions[j], ords[j] = d.Record.RowVersion.Text, d.Record.RowVersion.Ord
		srcs[j], seqs[j] = d.Version.Source.Name, int64(d.Version.Seq)
		payloads[j], deleted[j] = d.PayloadHash, d.Record.Op == event.OpDelete
	}
	rows, err := tx.Query(ctx, upsertLedgerSQL, t.entity.Name, batchUID, hashes, keys, versions, ords, srcs, seqs, payloads, deleted)
	if err != nil {
		return err
	}
	won, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	accepted := make(map[string]bool, len(won))
	for _, h := range won {
		accepted[h] = true
	}
	upserts := map[string][]byte{} // by column list: a JSON array of rows
	var deletes []map[string]any
	for _, i := range idx {
		d := &ds[i]
		if !accepted[d.Record.BKHash] {
			// Another replica committed a newer version of this key first.
			d.Outcome, d.Ledger, d.Target = pipeline.Stale, false, false
			continue
		}
		if !d.Target {
			continue
		}
		if d.Record.Op == event.OpDelete {
			deletes = append(deletes, d.Row)
			continue
		}
		cols := t.writable(d.Row)
		sig := strings.Join(cols, ",")
		buf := upserts[sig]
		if buf == nil {
			buf = append(make([]byte, 0, 1024*len(idx)), '[')
		} else {
			buf = append(buf, ',')
		}
		var err error
		if upserts[sig], err = pipeline.AppendRowJSON(buf, d.Row, cols); err != nil {
			return err
		}
	}
	for _, sig := range slices.Sorted(maps.Keys(upserts)) {
		body := append(upserts[sig], ']')
		if _, err := tx.Exec(ctx, t.upsertSQL(strings.Split(sig, ",")), body); err != nil {
			return err
		}
	}
	if len(deletes) > 0 {
		body, err := json.Marshal(deletes)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, t.deleteSQL(), body); err != nil {
			return err
		}
	}
	return nil
}

const countBatchSQL = `
INSERT INTO bridge.sync_batches AS b
    (uid, entity_name, source_system, sync_type, status, replica,
     rows_fetched, rows_normalized, rows_mapped, rows_inserted, rows_updated, rows_unchanged,
     rows_stale, rows_deleted, rows_parked, rows_released, rows_failed)
VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (uid) DO UPDATE SET
    rows_fetched = b.rows_fetched + excluded.rows_fetched,
    rows_normalized = b.rows_normalized + excluded.rows_normalized,
    rows_mapped = b.rows_mapped + excluded.rows_mapped,
    rows_inserted = b.rows_inserted + excluded.rows_inserted,
    rows_updated = b.rows_updated + excluded.rows_updated,
    rows_unchanged = b.rows_unchanged + excluded.rows_unchanged,
    rows_stale = b.rows_stale + excluded.rows_stale,
    rows_deleted = b.rows_deleted + excluded.rows_deleted,
    rows_parked = b.rows_parked + excluded.rows_parked,
    rows_released = b.rows_released + excluded.rows_released,
    rows_failed = b.rows_failed + excluded.rows_failed`

// countBatch creates the batch row on first use and adds the counts to it.
func countBatch(ctx context.Context, tx pgx.Tx, b Batch, c pipeline.Counts) error {
	_, err := tx.Exec(ctx, countBatchSQL, b.BatchUID, b.entityName(), sourceSystemOf(b), b.SyncType, b.Replica,
		c.Fetched, c.Normalized, c.Mapped, c.Inserted, c.Updated, c.Unchanged, c.Stale, c.Deleted, c.Parked, c.Released, c.Failed)
	return err
}

func sourceSystemOf(b Batch) string {
	for _, c := range b.Prepared.Candidates {
		if c.Record.SourceSystem != "" {
			return c.Record.SourceSystem
		}
	}
	return "oracle_ifs"
}

const abandonBatchesSQL = `
UPDATE bridge.sync_batches
SET status = 'failed', finished_at = greatest(updated_at, started_at),
    error_message = 'the replica stopped without closing this batch (a crash or a kill); its counts cover the transactions that committed'
WHERE replica = $1 AND status = 'running'`

// AbandonBatches closes, as failed, the batches replica left running: a process of
// that name stopped without closing them (a crash or a kill). It returns how many.
// Replica names must therefore be unique among the running processes.
func (s *Store) AbandonBatches(ctx context.Context, replica string) (int64, error) {
	tag, err := s.pool.Exec(ctx, abandonBatchesSQL, replica)
	return tag.RowsAffected(), err
}

// CloseBatch marks a rolling batch completed (or failed, with the reason).
func (s *Store) CloseBatch(ctx context.Context, uid uuid.UUID, failure error) error {
	status, msg := "completed", (*string)(nil)
	if failure != nil {
		status = "failed"
		m := sanitizeText(failure.Error())
		msg = &m
	}
	_, err := s.pool.Exec(ctx, `UPDATE bridge.sync_batches SET status = $2, error_message = $3, finished_at = greatest(now(), started_at) WHERE uid = $1 AND status = 'running'`, uid, status, msg)
	return err
}
