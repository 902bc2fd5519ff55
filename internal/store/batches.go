package store

import (
	"context"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// bridge.sync_batches: one row per unit of sync work, with its counters.

// countBatchSQL adds counts to a batch row, creating it first when it is missing,
// and closes it as completed when $17 is set.
const countBatchSQL = `
INSERT INTO bridge.sync_batches AS b
    (uid, entity_name, source_system, sync_type, status, replica,
     rows_fetched, rows_normalized, rows_mapped, rows_inserted, rows_updated, rows_unchanged,
     rows_stale, rows_deleted, rows_parked, rows_released, rows_failed, finished_at)
VALUES ($1, $2, $3, $4, CASE WHEN $17 THEN 'completed' ELSE 'running' END, $5,
        $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, CASE WHEN $17 THEN now() END)
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
    rows_failed = b.rows_failed + excluded.rows_failed,
    status = CASE WHEN $17 THEN 'completed' ELSE b.status END,
    finished_at = CASE WHEN $17 THEN greatest(now(), b.started_at) ELSE b.finished_at END`

// CountBatch adds counts to a batch row, creating it when missing.
func (t *tx) CountBatch(_ context.Context, b apply.BatchRow, c pipeline.Counts, close bool) error {
	syncType := b.SyncType
	if syncType == "" {
		syncType = "realtime"
	}
	source := b.SourceSystem
	if source == "" {
		source = "oracle_ifs"
	}
	entity := b.Entity
	if entity == "" {
		entity = apply.UnknownEntity
	}
	var replica *string
	if b.Replica != "" {
		replica = &b.Replica
	}
	// It goes with the next statement (the first of the batch, or COMMIT); an
	// error comes back from that one.
	t.laterExec("counting the batch", countBatchSQL, b.UID, entity, source, syncType, replica,
		c.Fetched, c.Normalized, c.Mapped, c.Inserted, c.Updated, c.Unchanged, c.Stale, c.Deleted, c.Parked, c.Released, c.Failed, close)
	return nil
}

const abandonBatchesSQL = `
UPDATE bridge.sync_batches
SET status = 'failed', finished_at = greatest(updated_at, started_at),
    error_message = 'the replica stopped without closing this batch (a crash or a kill); its counts cover the transactions that committed'
WHERE replica = $1 AND status = 'running'`

// RunningBatches counts the batches replica has running (ix_sync_batches_status).
func (s *Store) RunningBatches(ctx context.Context, replica string) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM bridge.sync_batches WHERE status = 'running' AND replica = $1`, replica).Scan(&n)
	return n, classify(err)
}

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
