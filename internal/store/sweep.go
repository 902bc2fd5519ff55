package store

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// SweepResult counts what one sweep did with the parked children it examined.
type SweepResult struct {
	Examined, Released, Orphaned, Waiting int
	// More is set when the sweep left due rows for the next one (its bounds).
	More bool
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

// manual reports whether the selection is an operator's ("re-check these now"),
// which neither uses up a child's re-checks nor orphans it.
func (sel ParkedSelection) manual() bool {
	return !sel.Expire && (len(sel.UIDs) > 0 || sel.All)
}

// The sweep reads what it decides on without the events (they are moved by SQL
// when a child is orphaned, and read in bounded chunks when it is released).
const parkedMetaColumns = `uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key::text,
       retry_count, max_retries, created_at, octet_length(child_raw)`

// One statement per way of choosing, each served by its own index: the due rows
// by ix_pending_children_retry, chosen UIDs by the primary key.
const (
	sweepDueSQL = `
SELECT ` + parkedMetaColumns + `
FROM bridge.pending_children
WHERE next_retry_at <= now()
ORDER BY next_retry_at
LIMIT $1
FOR UPDATE SKIP LOCKED`
	sweepUIDsSQL = `
SELECT ` + parkedMetaColumns + `
FROM bridge.pending_children
WHERE uid = ANY ($1)
ORDER BY uid
FOR UPDATE SKIP LOCKED`
	sweepAllSQL = `
SELECT ` + parkedMetaColumns + `
FROM bridge.pending_children
ORDER BY uid
LIMIT $1
FOR UPDATE SKIP LOCKED`
	sweepOlderSQL = `
SELECT ` + parkedMetaColumns + `
FROM bridge.pending_children
WHERE created_at <= now() - $2::interval
ORDER BY created_at
LIMIT $1
FOR UPDATE SKIP LOCKED`
)

type parkedRow struct {
	uid                      uuid.UUID
	child, childHash         string
	parentEntity, parentHash string
	parentKey                string
	retries, maxRetries      int
	created                  time.Time
	size                     int64
}

func (r parkedRow) parent() parentKey { return parentKey{r.parentEntity, r.parentHash} }

// takeParkedSQL takes chosen rows out of the queue with their events.
const takeParkedSQL = `
DELETE FROM bridge.pending_children WHERE uid = ANY ($1)
RETURNING uid, child_entity, child_raw, source_stream, coalesce(stream, ''), coalesce(subject, ''), stream_seq, published_at`

// waitParkedSQL counts a re-check of rows whose parent is still missing, and sets
// the next.
const waitParkedSQL = `
UPDATE bridge.pending_children p SET retry_count = p.retry_count + 1, next_retry_at = now() + w.delay
FROM unnest($1::uuid[], $2::interval[]) AS w (uid, delay)
WHERE p.uid = w.uid`

// orphanParkedSQL moves parked rows into the dead letters at stage orphan, with
// their events' bytes as received and the parent they waited for, in SQL: the
// events never pass through SyncFlow's memory. A message with an unresolved dead
// letter updates it (insertFailuresSQL's rule).
const orphanParkedSQL = `
WITH gone AS (
    DELETE FROM bridge.pending_children p USING unnest($1::uuid[], $2::text[], $3::uuid[]) AS o (uid, reason, new_uid)
    WHERE p.uid = o.uid
    RETURNING p.*, o.reason, o.new_uid)
INSERT INTO bridge.failed_records AS f
    (uid, batch_uid, entity_name, source_system, source_stream, stream, subject, stream_seq, bk_hash,
     raw_bytes, raw_data, stage_failed, error_message, max_retries, next_retry_at,
     parent_entity, parent_bk_hash, published_at)
SELECT g.new_uid, $4, g.child_entity, $5, g.source_stream, g.stream, g.subject, nullif(g.stream_seq, 0), g.child_bk_hash,
       g.child_raw, g.child_payload, 'orphan', g.reason, $6, NULL,
       g.parent_entity, g.parent_bk_hash, g.published_at
FROM gone g
ORDER BY g.uid
` + failureConflictSQL + `
RETURNING f.entity_name, coalesce(f.stream, ''), coalesce(f.stream_seq, 0), f.error_message`

// SweepParked re-checks parked children that are due (or the ones sel names): a
// child whose parent has been applied since is released through the pipeline; one
// that has used up its re-checks becomes a dead letter at stage orphan, naming the
// parent it waited for (whose arrival still releases it); the others wait twice as
// long as last time. An operator's release (UIDs or All without Expire) only
// releases: it neither counts a re-check nor orphans. The sweep is counted in a
// sync_batches row of its own; replica names who swept.
func (s *Store) SweepParked(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, replica string, sel ParkedSelection) (SweepResult, error) {
	var res SweepResult
	limit := sel.Limit
	if limit <= 0 {
		limit = 500
	}
	batchUID := s.NewUID()
	var w *txWork
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		res = SweepResult{}
		w = s.newWork(tx, batchUID, cat, rules)
		var q pgx.Rows
		var err error
		switch {
		case len(sel.UIDs) > 0:
			q, err = tx.Query(ctx, sweepUIDsSQL, sel.UIDs)
		case sel.Expire && sel.OlderThan > 0:
			q, err = tx.Query(ctx, sweepOlderSQL, limit, sel.OlderThan)
		case sel.All || sel.Expire:
			q, err = tx.Query(ctx, sweepAllSQL, limit)
		default:
			q, err = tx.Query(ctx, sweepDueSQL, limit)
		}
		if err != nil {
			return err
		}
		rows, err := pgx.CollectRows(q, scanParked)
		if err != nil || len(rows) == 0 {
			return err
		}
		res.Examined = len(rows)
		res.More = len(sel.UIDs) == 0 && len(rows) == limit
		if err := countSweep(ctx, tx, batchUID, rows, replica); err != nil {
			return err
		}
		keys := map[parentKey]bool{}
		for _, r := range rows {
			keys[r.parent()] = true
		}
		present, err := w.present(ctx, sortedKeys(keys))
		if err != nil {
			return err
		}
		plan := planSweep(rows, present, sel)
		if plan.deferred > 0 {
			res.More = true
		}
		if err := w.waitParked(ctx, plan.wait); err != nil {
			return err
		}
		if err := w.orphanParked(ctx, plan.orphan); err != nil {
			return err
		}
		items, err := w.takeParked(ctx, plan.release)
		if err != nil {
			return err
		}
		counts, err := w.applyReleased(ctx, items)
		if err != nil {
			return err
		}
		// A released child may wait again, for another of its parents.
		reparked, err := w.reparked(ctx, plan.release)
		if err != nil {
			return err
		}
		expired := 0
		if sel.Expire && len(reparked) > 0 {
			if err := w.orphanParked(ctx, reparked); err != nil {
				return err
			}
			counts.Parked -= int64(len(reparked))
			counts.Failed += int64(len(reparked))
			expired, reparked = len(reparked), nil
		}
		for _, r := range plan.orphan {
			w.recheck = append(w.recheck, r.parent()) // its parent may be committing right now
		}
		res.Released = len(plan.release) - len(reparked) - expired
		res.Orphaned = len(plan.orphan) + expired
		res.Waiting = len(plan.wait) + len(reparked) + plan.deferred + len(plan.untouched)
		// Every examined row has one outcome: released ones theirs (counted by
		// applyReleased), orphans failed, the others still parked.
		stillParked := len(plan.wait) + plan.deferred + len(plan.untouched)
		counts.Fetched += int64(len(plan.orphan) + stillParked)
		counts.Failed += int64(len(plan.orphan))
		counts.Parked += int64(stillParked)
		return w.finish(ctx, counts, true)
	})
	if err == nil && w != nil {
		w.committed(ctx)
	}
	return res, classify(err)
}

// sweepPlan is what a sweep does with the rows it examined.
type sweepPlan struct {
	release   []parkedRow // the parent is applied
	orphan    []parkedRow // waited too long (or expired by hand)
	wait      []parkedRow // re-checked, not yet: wait longer
	untouched []parkedRow // a manual release of a child whose parent is still missing
	deferred  int         // releasable, left for the next sweep by the byte bound
}

// planSweep decides, for each examined row, release, orphan or wait.
func planSweep(rows []parkedRow, present map[parentKey]bool, sel ParkedSelection) sweepPlan {
	var p sweepPlan
	var releaseBytesSoFar int64
	for _, r := range rows {
		switch {
		case present[r.parent()]:
			if len(p.release) > 0 && releaseBytesSoFar+r.size > releaseBytes {
				p.deferred++
				continue
			}
			releaseBytesSoFar += r.size
			p.release = append(p.release, r)
		case sel.Expire:
			p.orphan = append(p.orphan, r)
		case sel.manual():
			p.untouched = append(p.untouched, r)
		case r.retries+1 >= r.maxRetries:
			p.orphan = append(p.orphan, r)
		default:
			p.wait = append(p.wait, r)
		}
	}
	return p
}

func scanParked(r pgx.CollectableRow) (parkedRow, error) {
	var p parkedRow
	err := r.Scan(&p.uid, &p.child, &p.childHash, &p.parentEntity, &p.parentHash, &p.parentKey, &p.retries, &p.maxRetries, &p.created, &p.size)
	return p, err
}

func (w *txWork) waitParked(ctx context.Context, rows []parkedRow) error {
	if len(rows) == 0 {
		return nil
	}
	uids, delays := make([]uuid.UUID, len(rows)), make([]time.Duration, len(rows))
	policy := w.s.cfg.Park
	for i, r := range rows {
		uids[i], delays[i] = r.uid, policy.delay(r.retries+1)
	}
	_, err := w.tx.Exec(ctx, waitParkedSQL, uids, delays)
	return err
}

// orphanParked turns rows into orphan dead letters (see orphanParkedSQL).
func (w *txWork) orphanParked(ctx context.Context, rows []parkedRow) error {
	if len(rows) == 0 {
		return nil
	}
	uids, reasons, newUIDs := make([]uuid.UUID, len(rows)), make([]string, len(rows)), make([]uuid.UUID, len(rows))
	for i, r := range rows {
		uids[i], newUIDs[i] = r.uid, w.s.NewUID()
		reasons[i] = fmt.Sprintf("parent %s %s was never applied: the child waited since %s and was re-checked %d times; the parent's arrival still releases it",
			r.parentEntity, r.parentKey, r.created.UTC().Format(time.RFC3339), r.retries)
	}
	sourceSystem := "oracle_ifs"
	if w.cat != nil {
		sourceSystem = w.cat.SourceSystem
	}
	q, err := w.tx.Query(ctx, orphanParkedSQL, uids, reasons, newUIDs, w.batchUID, sourceSystem, w.s.cfg.Retry.MaxRetries)
	if err != nil {
		return err
	}
	defer q.Close()
	for q.Next() {
		var d deadLetter
		var reason, stream string
		if err := q.Scan(&d.Entity, &stream, &d.delivery.StreamSeq, &reason); err != nil {
			return err
		}
		d.delivery.Source, _ = event.SourceOfStream(stream)
		d.Stage, d.Err = pipeline.StageOrphan, fmt.Errorf("%s", reason)
		w.orphaned = append(w.orphaned, d)
	}
	return q.Err()
}

// takeParked takes the rows to release out of the queue, with their events.
func (w *txWork) takeParked(ctx context.Context, rows []parkedRow) ([]releasedItem, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	uids := make([]uuid.UUID, len(rows))
	for i, r := range rows {
		uids[i] = r.uid
	}
	q, err := w.tx.Query(ctx, takeParkedSQL, uids)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	var items []releasedItem
	for q.Next() {
		var (
			it                           releasedItem
			entity, src, stream, subject string
			seq                          int64
			raw                          []byte
			published                    *time.Time
		)
		if err := q.Scan(&it.uid, &entity, &raw, &src, &stream, &subject, &seq, &published); err != nil {
			return nil, err
		}
		it.delivery = pipeline.Delivery{Subject: subject, Source: event.SourceNamed(src), StreamSeq: uint64(seq), Data: raw}
		if published != nil {
			it.delivery.Published = *published
		}
		items = append(items, it)
	}
	return items, q.Err()
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
	q, err := w.tx.Query(ctx, `SELECT `+parkedMetaColumns+` FROM bridge.pending_children
		WHERE (child_entity, child_bk_hash) IN (SELECT * FROM unnest($1::text[], $2::text[]))`, entities, hashes)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(q, scanParked)
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
