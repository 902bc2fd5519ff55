package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// DeadLetterInfo is one dead letter as operators see it.
type DeadLetterInfo struct {
	UID            uuid.UUID       `json:"uid"`
	Entity         string          `json:"entity_name"`
	Stage          string          `json:"stage_failed"`
	Error          string          `json:"error_message"`
	Stream         string          `json:"stream,omitempty"`
	Subject        string          `json:"subject,omitempty"`
	StreamSeq      int64           `json:"stream_seq,omitempty"`
	BKHash         string          `json:"bk_hash,omitempty"`
	RetryCount     int             `json:"retry_count"`
	MaxRetries     int             `json:"max_retries"`
	NextRetryAt    *time.Time      `json:"next_retry_at"`
	CreatedAt      time.Time       `json:"created_at"`
	ResolvedAt     *time.Time      `json:"resolved_at"`
	ResolutionNote *string         `json:"resolution_note"`
	Raw            []byte          `json:"-"`
	RawText        string          `json:"raw,omitempty"`
	Normalized     json.RawMessage `json:"normalized_data,omitempty"`
	History        json.RawMessage `json:"history,omitempty"`
}

// DeadLetterFilter narrows ListDeadLetters.
type DeadLetterFilter struct {
	Entity, Stage string
	Since         time.Time
	Unresolved    bool
	Limit         int
}

const deadLetterColumns = `uid, entity_name, stage_failed, error_message, coalesce(stream, ''), coalesce(subject, ''),
	coalesce(stream_seq, 0), coalesce(bk_hash, ''), retry_count, max_retries, next_retry_at, created_at, resolved_at,
	resolution_note, raw_bytes, normalized_data, history`

func scanDeadLetter(row pgx.CollectableRow) (DeadLetterInfo, error) {
	var d DeadLetterInfo
	var normalized, history []byte
	err := row.Scan(&d.UID, &d.Entity, &d.Stage, &d.Error, &d.Stream, &d.Subject, &d.StreamSeq, &d.BKHash, &d.RetryCount,
		&d.MaxRetries, &d.NextRetryAt, &d.CreatedAt, &d.ResolvedAt, &d.ResolutionNote, &d.Raw, &normalized, &history)
	d.RawText = string(d.Raw)
	d.Normalized, d.History = normalized, history
	return d, err
}

// ListDeadLetters returns dead letters, newest first.
func (s *Store) ListDeadLetters(ctx context.Context, f DeadLetterFilter) ([]DeadLetterInfo, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, `SELECT `+deadLetterColumns+` FROM bridge.failed_records
		WHERE ($1 = '' OR entity_name = $1) AND ($2 = '' OR stage_failed = $2)
		  AND created_at >= $3 AND (NOT $4 OR resolved_at IS NULL)
		ORDER BY created_at DESC, uid DESC LIMIT $5`, f.Entity, f.Stage, f.Since, f.Unresolved, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanDeadLetter)
}

// ErrNotFound is returned for a UID that names nothing.
var ErrNotFound = errors.New("not found")

// DeadLetter returns one dead letter.
func (s *Store) DeadLetter(ctx context.Context, uid uuid.UUID) (DeadLetterInfo, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deadLetterColumns+` FROM bridge.failed_records WHERE uid = $1`, uid)
	if err != nil {
		return DeadLetterInfo{}, err
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDeadLetter)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, ErrNotFound
	}
	return d, err
}

// ResolveDeadLetter marks a dead letter resolved by hand, with a note.
func (s *Store) ResolveDeadLetter(ctx context.Context, uid uuid.UUID, note string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE bridge.failed_records SET resolved_at = now(), resolution_note = $2, next_retry_at = NULL,
		history = history || jsonb_build_object('at', now(), 'resolved_by_hand', $2::text)
		WHERE uid = $1 AND resolved_at IS NULL`, uid, sanitizeText(note))
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		if _, err := s.DeadLetter(ctx, uid); err != nil {
			return err
		}
		return errors.New("already resolved")
	}
	return nil
}

// UnresolvedDeadLetters returns the UIDs a retry with sel would choose.
func (s *Store) UnresolvedDeadLetters(ctx context.Context, sel DeadLetterSelection) ([]uuid.UUID, error) {
	rows, err := s.pool.Query(ctx, `SELECT uid FROM bridge.failed_records WHERE resolved_at IS NULL
		AND (coalesce(cardinality($1::uuid[]), 0) = 0 OR uid = ANY ($1)) AND ($2 = '' OR entity_name = $2) AND ($3 = '' OR stage_failed = $3)
		ORDER BY created_at`, sel.UIDs, sel.Entity, sel.Stage)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
}

// PurgeDeadLetters deletes resolved dead letters resolved before the cutoff, in
// chunks of a thousand so that no lock is held for long. It returns how many.
func (s *Store) PurgeDeadLetters(ctx context.Context, resolvedBefore time.Time) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, `DELETE FROM bridge.failed_records WHERE uid IN (
			SELECT uid FROM bridge.failed_records WHERE resolved_at IS NOT NULL AND resolved_at < $1 LIMIT 1000
			FOR UPDATE SKIP LOCKED)`, resolvedBefore)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < 1000 {
			return total, nil
		}
	}
}

// ParkedInfo is one parked child as operators see it.
type ParkedInfo struct {
	UID          uuid.UUID       `json:"uid"`
	Child        string          `json:"child_entity"`
	ChildBKHash  string          `json:"child_bk_hash"`
	Parent       string          `json:"parent_entity"`
	ParentKey    json.RawMessage `json:"parent_key"`
	RowVersion   string          `json:"child_rowversion"`
	RetryCount   int             `json:"retry_count"`
	MaxRetries   int             `json:"max_retries"`
	NextRetryAt  time.Time       `json:"next_retry_at"`
	CreatedAt    time.Time       `json:"created_at"`
	ChildPayload json.RawMessage `json:"child_payload,omitempty"`
}

// ListParked returns parked children, oldest first.
func (s *Store) ListParked(ctx context.Context, entity string, limit int) ([]ParkedInfo, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, `SELECT uid, child_entity, child_bk_hash, parent_entity, parent_key, child_rowversion,
		retry_count, max_retries, next_retry_at, created_at, child_payload
		FROM bridge.pending_children WHERE $1 = '' OR child_entity = $1 ORDER BY created_at, uid LIMIT $2`, entity, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ParkedInfo, error) {
		var p ParkedInfo
		var key, payload []byte
		err := r.Scan(&p.UID, &p.Child, &p.ChildBKHash, &p.Parent, &key, &p.RowVersion, &p.RetryCount, &p.MaxRetries, &p.NextRetryAt, &p.CreatedAt, &payload)
		p.ParentKey, p.ChildPayload = key, payload
		return p, err
	})
}

// ParkedUIDs returns which of uids are parked.
func (s *Store) ParkedUIDs(ctx context.Context, uids []uuid.UUID) ([]uuid.UUID, error) {
	rows, err := s.pool.Query(ctx, `SELECT uid FROM bridge.pending_children WHERE uid = ANY ($1)`, uids)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
}

// PruneResult counts what Prune removed.
type PruneResult struct {
	Batches, DeadLetters int64
}

// Prune removes, in chunks of a thousand rows with short transactions, the dead
// letters resolved before cutoff and the batches finished before cutoff that
// nothing still needs (no unresolved dead letter, no parked child, no checkpoint
// points at them; the ledger's reference is cleared). archive, when set, receives
// every removed row as JSON before it goes. With dryRun it only counts.
func (s *Store) Prune(ctx context.Context, cutoff time.Time, dryRun bool, archive func(table string, row []byte) error) (PruneResult, error) {
	var res PruneResult
	if dryRun {
		err := s.pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM bridge.failed_records WHERE resolved_at < $1),
			(SELECT count(*) FROM bridge.sync_batches b WHERE b.finished_at < $1 AND b.status <> 'running'
			   AND NOT EXISTS (SELECT 1 FROM bridge.failed_records f WHERE f.batch_uid = b.uid AND (f.resolved_at IS NULL OR f.resolved_at >= $1))
			   AND NOT EXISTS (SELECT 1 FROM bridge.pending_children p WHERE p.batch_uid = b.uid)
			   AND NOT EXISTS (SELECT 1 FROM bridge.erp_sync_state e WHERE e.last_batch_uid = b.uid))`, cutoff).Scan(&res.DeadLetters, &res.Batches)
		return res, err
	}
	chunk := func(sql, table string) (int64, error) {
		var total int64
		for {
			var n int64
			err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
				rows, err := tx.Query(ctx, sql, cutoff)
				if err != nil {
					return err
				}
				defer rows.Close()
				n = 0
				for rows.Next() {
					var row []byte
					if err := rows.Scan(&row); err != nil {
						return err
					}
					n++
					if archive != nil {
						if err := archive(table, row); err != nil {
							return err
						}
					}
				}
				return rows.Err()
			})
			if err != nil {
				return total, err
			}
			total += n
			if n < 1000 {
				return total, nil
			}
		}
	}
	var err error
	if res.DeadLetters, err = chunk(`DELETE FROM bridge.failed_records WHERE uid IN (
			SELECT uid FROM bridge.failed_records WHERE resolved_at < $1 LIMIT 1000 FOR UPDATE SKIP LOCKED)
		RETURNING row_to_json(failed_records)::text`, "failed_records"); err != nil {
		return res, err
	}
	res.Batches, err = chunk(`DELETE FROM bridge.sync_batches WHERE uid IN (
			SELECT b.uid FROM bridge.sync_batches b WHERE b.finished_at < $1 AND b.status <> 'running'
			  AND NOT EXISTS (SELECT 1 FROM bridge.failed_records f WHERE f.batch_uid = b.uid)
			  AND NOT EXISTS (SELECT 1 FROM bridge.pending_children p WHERE p.batch_uid = b.uid)
			  AND NOT EXISTS (SELECT 1 FROM bridge.erp_sync_state e WHERE e.last_batch_uid = b.uid)
			LIMIT 1000 FOR UPDATE SKIP LOCKED)
		RETURNING row_to_json(sync_batches)::text`, "sync_batches")
	return res, err
}
