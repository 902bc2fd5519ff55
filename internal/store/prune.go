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
	cutoffArg := func() []any { return []any{cutoff} }
	var err error
	if res.DeadLetters, err = s.deleteChunks(ctx, archive, "failed_records", `DELETE FROM bridge.failed_records WHERE uid IN (
			SELECT uid FROM bridge.failed_records WHERE resolved_at < $1 LIMIT 1000 FOR UPDATE SKIP LOCKED)
		RETURNING '', '', row_to_json(failed_records)::text`, cutoffArg); err != nil {
		return res, err
	}
	res.Batches, err = s.deleteChunks(ctx, archive, "sync_batches", `DELETE FROM bridge.sync_batches WHERE uid IN (
			SELECT b.uid FROM bridge.sync_batches b WHERE b.finished_at < $1 AND b.status <> 'running'
			  AND NOT EXISTS (SELECT 1 FROM bridge.failed_records f WHERE f.batch_uid = b.uid)
			  AND NOT EXISTS (SELECT 1 FROM bridge.pending_children p WHERE p.batch_uid = b.uid)
			  AND NOT EXISTS (SELECT 1 FROM bridge.erp_sync_state e WHERE e.last_batch_uid = b.uid)
			LIMIT 1000 FOR UPDATE SKIP LOCKED)
		RETURNING '', '', row_to_json(sync_batches)::text`, cutoffArg)
	return res, err
}

// countTombstonesSQL counts the tombstones bridge.prune_tombstones (migration
// 0005) would remove for the cutoff $1: those of keys nothing may still bring an
// older version of (no unresolved dead letter of the key, or of its entity
// with no key read, no parked child of the key).
const countTombstonesSQL = `SELECT count(*) FROM bridge.synced_records r
	WHERE r.deleted AND r.updated_at < $1
	  AND NOT EXISTS (SELECT 1 FROM bridge.failed_records f
	                  WHERE f.entity_name = r.entity_name AND (f.bk_hash = r.bk_hash OR f.bk_hash IS NULL)
	                    AND f.resolved_at IS NULL)
	  AND NOT EXISTS (SELECT 1 FROM bridge.pending_children p
	                  WHERE p.child_entity = r.entity_name AND p.child_bk_hash = r.bk_hash)`

// PruneTombstones removes the ledger's tombstones (keys whose last event was a
// delete) written before cutoff, except those of keys with an unresolved dead
// letter or a parked child, and those of an entity with an unresolved dead
// letter whose key was never read (a decode or max_deliver failure: its retry
// could carry any key of the entity). It walks the ledger once in key order, a thousand
// tombstones per short transaction, and re-checks each row as it deletes it,
// so a key that a writer brings back meanwhile stays. archive, when set,
// receives every removed row first. With dryRun it only counts.
//
// Whether cutoff is old enough is the caller's to decide: a tombstone is what
// keeps an older event of a deleted key from bringing the row back, so cutoff
// must lie further back than any such event can still arrive from.
func (s *Store) PruneTombstones(ctx context.Context, cutoff time.Time, dryRun bool, archive Archive) (int64, error) {
	if dryRun {
		var n int64
		err := s.pool.QueryRow(ctx, countTombstonesSQL, cutoff).Scan(&n)
		return n, err
	}
	// The delete runs as the schema's owner, in a function that can remove
	// tombstones and nothing else (the operators' role may not delete ledger rows).
	var entity, hash string
	return s.deleteChunks(ctx, archive, "synced_records", `SELECT * FROM bridge.prune_tombstones($1, $2, $3, 1000)`,
		func() []any { return []any{cutoff, entity, hash} },
		func(e, h string) {
			if e > entity || (e == entity && h > hash) {
				entity, hash = e, h
			}
		})
}

// deleteChunks runs del, a DELETE of at most a thousand rows that returns each
// row's key (two texts, for a walk in key order; empty otherwise) and JSON, each
// time in a transaction of its own, until it deletes fewer. Each chunk's rows go
// to archive, and are synced there, before the chunk commits. params gives the
// statement's parameters each time; seen, when given, hears every key.
func (s *Store) deleteChunks(ctx context.Context, archive Archive, table, del string, params func() []any, seen ...func(entity, hash string)) (int64, error) {
	var total int64
	for {
		var n int64
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, del, params()...)
			if err != nil {
				return err
			}
			defer rows.Close()
			n = 0
			for rows.Next() {
				var k1, k2 string
				var row []byte
				if err := rows.Scan(&k1, &k2, &row); err != nil {
					return err
				}
				n++
				for _, f := range seen {
					f(k1, k2)
				}
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
