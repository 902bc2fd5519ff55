package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// DeadLetterSelection chooses unresolved dead letters to re-run.
type DeadLetterSelection struct {
	// Due chooses the ones whose automatic retry is due (the retry worker); the
	// other fields are then ignored.
	Due bool
	// UIDs, Entity and Stage narrow the choice; all empty means every unresolved one.
	UIDs   []uuid.UUID
	Entity string
	Stage  string
	// Limit caps one run (default 500).
	Limit int
}

// RetryResult counts what a retry run did.
type RetryResult struct {
	Retried, Resolved, FailedAgain int
}

// The partial index ix_failed_records_retry serves this query.
const dueDeadLettersSQL = `
SELECT uid, entity_name, coalesce(source_stream, 'realtime'), coalesce(stream, ''), coalesce(subject, ''),
       coalesce(stream_seq, 0), raw_bytes, retry_count, max_retries, stage_failed, error_message, published_at
FROM bridge.failed_records
WHERE resolved_at IS NULL AND next_retry_at <= now()
ORDER BY next_retry_at
LIMIT $1
FOR UPDATE SKIP LOCKED`

const chosenDeadLettersSQL = `
SELECT uid, entity_name, coalesce(source_stream, 'realtime'), coalesce(stream, ''), coalesce(subject, ''),
       coalesce(stream_seq, 0), raw_bytes, retry_count, max_retries, stage_failed, error_message, published_at
FROM bridge.failed_records
WHERE resolved_at IS NULL
  AND (coalesce(cardinality($2::uuid[]), 0) = 0 OR uid = ANY ($2))
  AND ($3 = '' OR entity_name = $3)
  AND ($4 = '' OR stage_failed = $4)
ORDER BY created_at
LIMIT $1
FOR UPDATE SKIP LOCKED`

type deadRow struct {
	uid                          uuid.UUID
	entity, src, stream, subject string
	seq                          int64
	raw                          []byte
	retries, maxRetries          int
	stage, errText               string
	published                    *time.Time
}

const resolveSQL = `
UPDATE bridge.failed_records SET
    resolved_at = now(), resolution_note = $2, next_retry_at = NULL,
    history = history || jsonb_build_object('at', now(), 'stage', stage_failed, 'error', error_message, 'retry', $2::text)
WHERE uid = $1`

const failedAgainSQL = `
UPDATE bridge.failed_records SET
    history = history || jsonb_build_object('at', now(), 'stage', stage_failed, 'error', error_message),
    retry_count = retry_count + 1, stage_failed = $2, error_message = $3,
    normalized_data = coalesce($4::jsonb, normalized_data), bk_hash = coalesce($5, bk_hash),
    next_retry_at = CASE WHEN $6 AND retry_count + 1 < max_retries THEN now() + $7::interval END
WHERE uid = $1`

// RetryDeadLetters re-runs chosen dead letters through the current pipeline (the
// current catalog and mapping rules), in one transaction. One that now gets any
// outcome but failed (applied, unchanged, stale, parked) is resolved; one that fails
// again records the new stage and error, keeps the old ones in its history, and is
// scheduled again while its stage is retried automatically and retries remain.
//
// A record that fails in a way that ends the transaction (anything but an
// unavailable database or a conflict) does not hold back the others: the run is
// done again with every record under a savepoint of its own, and the one to blame
// fails again at stage write, its next retry pushed back.
func (s *Store) RetryDeadLetters(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, replica string, sel DeadLetterSelection) (RetryResult, error) {
	iso := isolation{anyError: true}
	res, err := s.retryDeadLetters(ctx, cat, rules, replica, sel, iso)
	if err != nil && (&txWork{isolate: iso}).isolates(err) {
		iso.records = true
		res, err = s.retryDeadLetters(ctx, cat, rules, replica, sel, iso)
	}
	return res, classify(err)
}

func (s *Store) retryDeadLetters(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, replica string, sel DeadLetterSelection, iso isolation) (RetryResult, error) {
	var res RetryResult
	limit := sel.Limit
	if limit <= 0 {
		limit = 500
	}
	policy := s.cfg.Retry
	batchUID := s.NewUID()
	var w *txWork
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		res = RetryResult{}
		w = s.newWork(tx, batchUID, cat, rules)
		w.isolate = iso
		var q pgx.Rows
		var err error
		if sel.Due {
			q, err = tx.Query(ctx, dueDeadLettersSQL, limit)
		} else {
			q, err = tx.Query(ctx, chosenDeadLettersSQL, limit, sel.UIDs, sel.Entity, sel.Stage)
		}
		if err != nil {
			return err
		}
		rows, err := pgx.CollectRows(q, func(r pgx.CollectableRow) (deadRow, error) {
			var d deadRow
			err := r.Scan(&d.uid, &d.entity, &d.src, &d.stream, &d.subject, &d.seq, &d.raw, &d.retries, &d.maxRetries, &d.stage, &d.errText, &d.published)
			return d, err
		})
		if err != nil || len(rows) == 0 {
			return err
		}
		entity := rows[0].entity
		ds := make([]pipeline.Delivery, len(rows))
		for i, r := range rows {
			ds[i] = pipeline.Delivery{Subject: r.subject, Source: event.SourceNamed(r.src), StreamSeq: uint64(r.seq), Data: r.raw}
			if r.published != nil {
				ds[i].Published = *r.published
			}
			if r.entity != entity {
				entity = "several"
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, replica) VALUES ($1, $2, 'realtime', 'running', $3)`,
			batchUID, entity, replica); err != nil {
			return err
		}
		failures := map[int]pipeline.Failure{}
		outcomes, err := w.applyDeliveries(ctx, ds, func(f pipeline.Failure) { failures[f.Index] = f })
		if err != nil {
			return err
		}
		counts := pipeline.Counts{Fetched: int64(len(rows))}
		for i, r := range rows {
			counts.Add(outcomes[i])
			f, failed := failures[i]
			if !failed {
				if _, err := tx.Exec(ctx, resolveSQL, r.uid, "retried: "+string(outcomes[i])); err != nil {
					return err
				}
				res.Resolved++
				continue
			}
			var normalized *string
			if f.Normalized != nil {
				if body, err := json.Marshal(f.Normalized); err == nil {
					normalized = jsonbText(body)
				}
			}
			var bk *string
			if f.BKHash != "" {
				bk = &f.BKHash
			}
			if _, err := tx.Exec(ctx, failedAgainSQL, r.uid, string(f.Stage), sanitizeText(f.Err.Error()), normalized, bk,
				AutoRetried(f.Stage), policy.delay(r.retries+1)); err != nil {
				return err
			}
			res.FailedAgain++
		}
		res.Retried = len(rows)
		return w.finish(ctx, counts, true)
	})
	if err == nil && w != nil {
		w.committed(ctx)
	}
	return res, err
}
