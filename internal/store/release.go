package store

import (
	"context"
	"maps"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Parents and children in concurrent transactions
//
// A parent's transaction releases, before it commits, the children it finds
// waiting for it. A child's transaction parks the child when it does not find the
// parent. Two such transactions running at once can miss each other: the child
// does not see the uncommitted parent, the parent does not see the uncommitted
// child. So after each commit both re-check: the parent's transaction for children
// of the parents it applied, the child's for the parents its children wait for.
// Whichever of the two commits last sees the other's work in its re-check, so
// the child is released (in a transaction of its own, through the pipeline, and
// counted in the batch's rows_released). Should the process die between the commit
// and the re-check, the sweeper releases the child at its next re-check.

const anyReleasableSQL = `
SELECT EXISTS (
    SELECT 1 FROM bridge.pending_children p
    JOIN unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash)
      ON p.parent_entity = k.entity_name AND p.parent_bk_hash = k.bk_hash
    JOIN bridge.synced_records r ON r.entity_name = p.parent_entity AND r.bk_hash = p.parent_bk_hash AND NOT r.deleted)`

const releaseReadySQL = `
DELETE FROM bridge.pending_children
WHERE uid IN (
    SELECT p.uid FROM bridge.pending_children p
    JOIN unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash)
      ON p.parent_entity = k.entity_name AND p.parent_bk_hash = k.bk_hash
    JOIN bridge.synced_records r ON r.entity_name = p.parent_entity AND r.bk_hash = p.parent_bk_hash AND NOT r.deleted
    ORDER BY p.uid
    FOR UPDATE OF p SKIP LOCKED)
RETURNING child_entity, child_payload::text, source_stream, coalesce(stream, ''), coalesce(subject, ''), stream_seq`

// releaseAfterCommit is the re-check after a commit: it releases the children
// waiting for any of keys whose parent is applied now, and repeats for what that
// applies and parks, a few rounds at most (the sweeper does the rest). A failure
// is logged, not returned: the transaction it follows has committed, and the
// sweeper will find the children.
func (s *Store) releaseAfterCommit(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, batchUID uuid.UUID, keys []parentKey) {
	for round := 0; len(keys) > 0 && round < 10; round++ {
		next, err := s.releaseReady(ctx, cat, rules, batchUID, keys)
		if err != nil {
			if ctx.Err() == nil {
				s.cfg.Logger.Warn("re-checking parked children after a commit failed; the sweeper will release them", "err", err)
			}
			return
		}
		keys = next
	}
}

func (s *Store) releaseReady(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, batchUID uuid.UUID, keys []parentKey) ([]parentKey, error) {
	keys = uniqueKeys(keys)
	entities, hashes := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		entities[i], hashes[i] = k.entity, k.hash
	}
	var any bool
	if err := s.pool.QueryRow(ctx, anyReleasableSQL, entities, hashes).Scan(&any); err != nil || !any {
		return nil, err
	}
	var w *txWork
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		w = s.newWork(tx, batchUID, cat, rules)
		rows, err := tx.Query(ctx, releaseReadySQL, entities, hashes)
		if err != nil {
			return err
		}
		byEntity, err := collectReleased(rows)
		if err != nil {
			return err
		}
		if _, err := w.applyReleased(ctx, byEntity); err != nil {
			return err
		}
		return w.finish(ctx, pipeline.Counts{}, false)
	})
	if err != nil {
		return nil, err
	}
	w.noteCheckpoints()
	return w.recheck, nil
}

// collectReleased reads released pending rows into deliveries, by child entity.
func collectReleased(rows pgx.Rows) (map[string][]pipeline.Delivery, error) {
	defer rows.Close()
	byEntity := map[string][]pipeline.Delivery{}
	for rows.Next() {
		var child, payload, src, stream, subject string
		var seq int64
		if err := rows.Scan(&child, &payload, &src, &stream, &subject, &seq); err != nil {
			return nil, err
		}
		byEntity[child] = append(byEntity[child], pipeline.Delivery{Subject: subject, Source: pipeline.Source(src), Stream: stream, StreamSeq: uint64(seq), Data: []byte(payload)})
	}
	return byEntity, rows.Err()
}

func uniqueKeys(keys []parentKey) []parentKey {
	set := map[parentKey]bool{}
	for _, k := range keys {
		set[k] = true
	}
	return slices.SortedFunc(maps.Keys(set), func(a, b parentKey) int {
		if c := strings.Compare(a.entity, b.entity); c != 0 {
			return c
		}
		return strings.Compare(a.hash, b.hash)
	})
}
