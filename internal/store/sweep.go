package store

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// SweepResult counts what one sweep did with the parked children it examined.
type SweepResult struct {
	Examined, Released, Orphaned, Waiting int
}

// ParkedSelection chooses parked children for SweepParked.
type ParkedSelection struct {
	// UIDs, when set, chooses these rows whatever their next_retry_at.
	UIDs []uuid.UUID
	// All chooses every parked row (parked release --all).
	All bool
	// Expire turns every chosen row whose parent is still missing into an orphan
	// now, instead of waiting for its retries (parked expire).
	Expire bool
	// OlderThan, with Expire, chooses rows parked longer than this.
	OlderThan time.Duration
	// Limit caps the rows of one sweep (default 500).
	Limit int
}

const parkedColumns = `uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key::text, child_payload::text,
       source_stream, coalesce(stream, ''), coalesce(subject, ''), stream_seq, retry_count, max_retries, created_at`

const sweepSelectSQL = `
SELECT ` + parkedColumns + `
FROM bridge.pending_children
WHERE CASE WHEN cardinality($1::uuid[]) > 0 THEN uid = ANY ($1)
           WHEN $2 THEN true
           WHEN $3::interval IS NOT NULL THEN created_at <= now() - $3::interval
           ELSE next_retry_at <= now() END
ORDER BY next_retry_at
LIMIT $4
FOR UPDATE SKIP LOCKED`

type parkedRow struct {
	uid                      uuid.UUID
	child, childHash         string
	parentEntity, parentHash string
	parentKey, payload, src  string
	stream, subject          string
	seq                      int64
	retries, maxRetries      int
	created                  time.Time
}

// SweepParked re-checks parked children that are due (or the ones sel names): a
// child whose parent has been applied since is released through the pipeline; one
// that has used up its re-checks becomes a dead letter at stage orphan, naming the
// parent it waited for; the others wait twice as long as last time. The sweep is
// counted in a sync_batches row of its own; replica names who swept.
func (s *Store) SweepParked(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, replica string, sel ParkedSelection) (SweepResult, error) {
	var res SweepResult
	policy := s.cfg.Park
	limit := sel.Limit
	if limit <= 0 {
		limit = 500
	}
	batchUID := s.NewUID()
	var w *txWork
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		res = SweepResult{}
		w = s.newWork(tx, batchUID, cat, rules)
		var olderThan *time.Duration
		if sel.Expire && sel.OlderThan > 0 {
			olderThan = &sel.OlderThan
		}
		q, err := tx.Query(ctx, sweepSelectSQL, sel.UIDs, sel.All, olderThan, limitFor(sel, limit))
		if err != nil {
			return err
		}
		rows, err := pgx.CollectRows(q, scanParked)
		if err != nil || len(rows) == 0 {
			return err
		}
		res.Examined = len(rows)
		if err := countSweep(ctx, tx, batchUID, rows, replica); err != nil {
			return err
		}
		keys := make([]parentKey, len(rows))
		for i, r := range rows {
			keys[i] = parentKey{r.parentEntity, r.parentHash}
		}
		present, err := w.present(ctx, keys)
		if err != nil {
			return err
		}
		var release, orphan, wait []parkedRow
		for _, r := range rows {
			switch {
			case present[parentKey{r.parentEntity, r.parentHash}]:
				release = append(release, r)
			case sel.Expire || r.retries+1 >= r.maxRetries:
				orphan = append(orphan, r)
			default:
				wait = append(wait, r)
			}
		}
		var done []uuid.UUID
		for _, r := range append(release, orphan...) {
			done = append(done, r.uid)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM bridge.pending_children WHERE uid = ANY ($1)`, done); err != nil {
			return err
		}
		for _, r := range wait {
			if _, err := tx.Exec(ctx, `UPDATE bridge.pending_children SET retry_count = retry_count + 1, next_retry_at = now() + $2::interval WHERE uid = $1`,
				r.uid, policy.delay(r.retries+1)); err != nil {
				return err
			}
		}
		byEntity := map[string][]pipeline.Delivery{}
		for _, r := range release {
			byEntity[r.child] = append(byEntity[r.child], r.delivery())
		}
		counts, err := w.applyReleased(ctx, byEntity)
		if err != nil {
			return err
		}
		// A released child may wait again, for another of its parents.
		reparked, err := w.reparked(ctx, release)
		if err != nil {
			return err
		}
		initialOrphans := len(orphan)
		if sel.Expire && len(reparked) > 0 {
			var uids []uuid.UUID
			for _, r := range reparked {
				uids = append(uids, r.uid)
			}
			if _, err := tx.Exec(ctx, `DELETE FROM bridge.pending_children WHERE uid = ANY ($1)`, uids); err != nil {
				return err
			}
			orphan = append(orphan, reparked...)
			counts.Parked -= int64(len(reparked))
			counts.Failed += int64(len(reparked))
			reparked = nil
		}
		for _, r := range orphan {
			w.deadLetter(pipeline.Failure{Stage: pipeline.StageOrphan, Entity: r.child, BKHash: r.childHash,
				Err: fmt.Errorf("parent %s %s was never applied: the child waited since %s and was re-checked %d times",
					r.parentEntity, r.parentKey, r.created.UTC().Format(time.RFC3339), r.retries)}, r.delivery())
		}
		res.Released = len(release) - len(reparked)
		res.Orphaned, res.Waiting = len(orphan), len(wait)+len(reparked)
		counts.Fetched += int64(initialOrphans + len(wait))
		counts.Failed += int64(initialOrphans)
		counts.Parked += int64(len(wait))
		return w.finish(ctx, counts, true)
	})
	if err == nil && w != nil {
		w.committed(ctx)
	}
	return res, err
}

func scanParked(r pgx.CollectableRow) (parkedRow, error) {
	var p parkedRow
	err := r.Scan(&p.uid, &p.child, &p.childHash, &p.parentEntity, &p.parentHash, &p.parentKey, &p.payload, &p.src, &p.stream,
		&p.subject, &p.seq, &p.retries, &p.maxRetries, &p.created)
	return p, err
}

// reparked returns the rows now parked for the children of released.
func (w *txWork) reparked(ctx context.Context, released []parkedRow) ([]parkedRow, error) {
	if len(released) == 0 {
		return nil, nil
	}
	entities, hashes := make([]string, len(released)), make([]string, len(released))
	for i, r := range released {
		entities[i], hashes[i] = r.child, r.childHash
	}
	q, err := w.tx.Query(ctx, `SELECT `+parkedColumns+` FROM bridge.pending_children
		WHERE (child_entity, child_bk_hash) IN (SELECT * FROM unnest($1::text[], $2::text[]))`, entities, hashes)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(q, scanParked)
}

func limitFor(sel ParkedSelection, limit int) int {
	if len(sel.UIDs) > 0 {
		return len(sel.UIDs)
	}
	return limit
}

func (r parkedRow) delivery() pipeline.Delivery {
	return pipeline.Delivery{Subject: r.subject, Source: pipeline.Source(r.src), Stream: r.stream, StreamSeq: uint64(r.seq), Data: []byte(r.payload)}
}

// present returns which of keys are applied (in the ledger and not deleted).
func (w *txWork) present(ctx context.Context, keys []parentKey) (map[parentKey]bool, error) {
	entities, hashes := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		entities[i], hashes[i] = k.entity, k.hash
	}
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

// countSweep creates the sweep's batch row (the rows it writes reference it).
func countSweep(ctx context.Context, tx pgx.Tx, uid uuid.UUID, rows []parkedRow, replica string) error {
	entity := rows[0].child
	for _, r := range rows {
		if r.child != entity {
			entity = "several"
			break
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, replica) VALUES ($1, $2, 'realtime', 'running', $3)`, uid, entity, replica)
	return err
}

// addCounts adds c to a batch row, closing it when close is set.
func addCounts(ctx context.Context, tx pgx.Tx, uid uuid.UUID, c pipeline.Counts, close bool) error {
	_, err := tx.Exec(ctx, `UPDATE bridge.sync_batches SET
		rows_fetched = rows_fetched + $2, rows_normalized = rows_normalized + $3, rows_mapped = rows_mapped + $4,
		rows_inserted = rows_inserted + $5, rows_updated = rows_updated + $6, rows_unchanged = rows_unchanged + $7,
		rows_stale = rows_stale + $8, rows_deleted = rows_deleted + $9, rows_parked = rows_parked + $10,
		rows_released = rows_released + $11, rows_failed = rows_failed + $12,
		status = CASE WHEN $13 THEN 'completed' ELSE status END,
		finished_at = CASE WHEN $13 THEN now() ELSE finished_at END
		WHERE uid = $1`, uid, c.Fetched, c.Normalized, c.Mapped, c.Inserted, c.Updated, c.Unchanged, c.Stale, c.Deleted, c.Parked, c.Released, c.Failed, close)
	return err
}
