package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// PruneResult counts what Prune removed.
type PruneResult struct {
	Batches, DeadLetters int64
}

// Archive receives the rows Prune removes. Prune calls Sync before it commits
// the deletion of each chunk, so that a row is gone only once it is safely
// written: an error from Add or Sync rolls the chunk back.
type Archive interface {
	Add(table string, row []byte) error
	Sync() error
}

// Prune removes, in chunks of a thousand rows with short transactions, the dead
// letters resolved before cutoff and the batches finished before cutoff that
// nothing still needs (no unresolved dead letter, no parked child, no checkpoint
// points at them; the ledger's reference is cleared). archive, when set, receives
// every removed row as JSON before it goes. With dryRun it only counts.
func (s *Store) Prune(ctx context.Context, cutoff time.Time, dryRun bool, archive Archive) (PruneResult, error) {
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
						if err := archive.Add(table, row); err != nil {
							return err
						}
					}
				}
				if err := rows.Err(); err != nil {
					return err
				}
				if archive != nil && n > 0 {
					return archive.Sync()
				}
				return nil
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
