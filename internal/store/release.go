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

// Parents and children in concurrent transactions
//
// A parent's transaction releases, before it commits, the children it finds
// waiting for it, and the orphan dead letters (children that waited too long)
// that name it. A child's transaction parks the child when it does not find the
// parent; the sweeper orphans a child that waited too long. Two such transactions
// running at once can miss each other: neither sees the other's uncommitted work.
// So after each commit both re-check: the parent's transaction for children and
// orphans of the parents it applied, the child's (or the sweeper's) for the
// parents its children wait for. Whichever of the two commits last sees the
// other's work in its re-check, so the child is released (in a transaction of its
// own, through the pipeline, and counted in the batch's rows_released). Should the
// process die between the commit and the re-check, the sweeper releases a parked
// child at its next re-check, and the parent's next change an orphan.
//
// # Bounded releases
//
// One statement releases at most releaseLimit children and releaseBytes of their
// events: a site with 30,000 waiting work centers is released over several
// transactions, never all at once in one. What a transaction leaves is released by
// the re-checks after its commit, and is marked due for the sweeper in case the
// process dies first.

const (
	releaseLimit = 1000
	releaseBytes = 4 << 20
)

// releaseSQL takes out of the queue, in key order and within the bounds, the
// children waiting for the given parents that are applied (in this transaction or
// a committed one), and locks the orphan dead letters that name them. It skips
// rows another transaction holds (one parking a newer version of the child):
// waiting for them deadlocked with that transaction, and the re-check after
// commit releases them. The last column counts the parked rows locked, to tell
// whether the bounds cut the release short.
const releaseSQL = `
WITH k AS (
    SELECT * FROM unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash)),
locked AS (
    SELECT p.uid, octet_length(p.child_raw) AS size
    FROM bridge.pending_children p
    JOIN k ON p.parent_entity = k.entity_name AND p.parent_bk_hash = k.bk_hash
    JOIN bridge.synced_records r ON r.entity_name = p.parent_entity AND r.bk_hash = p.parent_bk_hash AND NOT r.deleted
    ORDER BY p.uid
    LIMIT $3
    FOR UPDATE OF p SKIP LOCKED),
chunk AS (
    SELECT uid FROM (SELECT uid, sum(size) OVER (ORDER BY uid) - size AS before FROM locked) c
    WHERE before < $4),
released AS (
    DELETE FROM bridge.pending_children p USING chunk WHERE p.uid = chunk.uid
    RETURNING p.uid, p.child_entity, p.child_raw, p.source_stream, p.stream, p.subject, p.stream_seq, p.published_at),
orphans AS (
    SELECT f.uid, f.entity_name, f.raw_bytes, f.source_stream, f.stream, f.subject, f.stream_seq, f.published_at
    FROM bridge.failed_records f
    JOIN k ON f.parent_entity = k.entity_name AND f.parent_bk_hash = k.bk_hash
    JOIN bridge.synced_records r ON r.entity_name = f.parent_entity AND r.bk_hash = f.parent_bk_hash AND NOT r.deleted
    WHERE f.stage_failed = 'orphan' AND f.resolved_at IS NULL
    ORDER BY f.uid
    LIMIT $3
    FOR UPDATE OF f SKIP LOCKED)
SELECT false, uid, child_entity, child_raw, source_stream, coalesce(stream, ''), coalesce(subject, ''),
       coalesce(stream_seq, 0), published_at, (SELECT count(*) FROM locked)
FROM released
UNION ALL
SELECT true, uid, entity_name, raw_bytes, coalesce(source_stream, 'realtime'), coalesce(stream, ''), coalesce(subject, ''),
       coalesce(stream_seq, 0), published_at, 0
FROM orphans`

// markDueSQL makes the children a bounded release left behind due for the
// sweeper now, should the process die before its re-checks release them.
const markDueSQL = `
UPDATE bridge.pending_children p SET next_retry_at = now()
FROM unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash)
WHERE p.parent_entity = k.entity_name AND p.parent_bk_hash = k.bk_hash AND p.next_retry_at > now()`

// anyReleasableSQL tells, cheaply, whether a re-check after commit has anything
// to release.
const anyReleasableSQL = `
WITH k AS (
    SELECT * FROM unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash))
SELECT EXISTS (
    SELECT 1 FROM bridge.pending_children p
    JOIN k ON p.parent_entity = k.entity_name AND p.parent_bk_hash = k.bk_hash
    JOIN bridge.synced_records r ON r.entity_name = p.parent_entity AND r.bk_hash = p.parent_bk_hash AND NOT r.deleted)
OR EXISTS (
    SELECT 1 FROM bridge.failed_records f
    JOIN k ON f.parent_entity = k.entity_name AND f.parent_bk_hash = k.bk_hash
    JOIN bridge.synced_records r ON r.entity_name = f.parent_entity AND r.bk_hash = f.parent_bk_hash AND NOT r.deleted
    WHERE f.stage_failed = 'orphan' AND f.resolved_at IS NULL)`

const resolveReleasedOrphansSQL = `
UPDATE bridge.failed_records SET
    resolved_at = now(), next_retry_at = NULL, resolution_note = $2,
    history = history || jsonb_build_object('at', now(), 'stage', stage_failed, 'error', error_message, 'released', $2::text)
WHERE uid = ANY ($1)`

// releasedItem is a child taken out of the queue, or an orphan dead letter whose
// parent has come.
type releasedItem struct {
	orphan   bool
	uid      uuid.UUID
	delivery pipeline.Delivery
}

// takeReleased runs releaseSQL for keys; more says the bounds left children of
// them behind.
func (w *txWork) takeReleased(ctx context.Context, keys []parentKey) (items []releasedItem, more bool, err error) {
	entities, hashes := keyArrays(keys)
	rows, err := w.tx.Query(ctx, releaseSQL, entities, hashes, releaseLimit, releaseBytes)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	var parked, orphans, locked int64
	for rows.Next() {
		var (
			it              releasedItem
			entity, src     string
			stream, subject string
			seq, lockedNow  int64
			raw             []byte
			published       *time.Time
		)
		if err := rows.Scan(&it.orphan, &it.uid, &entity, &raw, &src, &stream, &subject, &seq, &published, &lockedNow); err != nil {
			return nil, false, err
		}
		it.delivery = pipeline.Delivery{Subject: subject, Source: event.SourceNamed(src), StreamSeq: uint64(seq), Data: raw}
		if published != nil {
			it.delivery.Published = *published
		}
		if it.orphan {
			orphans++
		} else {
			parked++
			locked = lockedNow
		}
		items = append(items, it)
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	return items, locked >= releaseLimit || parked < locked || orphans >= releaseLimit, nil
}

// release applies, in this transaction, the children waiting for keys (parents
// this transaction applied), and so on down the catalog, within the bounds of one
// release per level.
func (w *txWork) release(ctx context.Context, keys []parentKey) error {
	if len(keys) == 0 {
		return nil
	}
	w.recheck = append(w.recheck, keys...)
	items, more, err := w.takeReleased(ctx, keys)
	if err != nil {
		return err
	}
	if more {
		entities, hashes := keyArrays(keys)
		if _, err := w.tx.Exec(ctx, markDueSQL, entities, hashes); err != nil {
			return err
		}
	}
	_, err = w.applyReleased(ctx, items)
	return err
}

// applyReleased runs released children and orphans through the pipeline, as fresh
// deliveries: a failure now is recorded on the message's dead letter (a released
// orphan's own), and an orphan that got any other outcome is resolved. It counts
// what became of them.
func (w *txWork) applyReleased(ctx context.Context, items []releasedItem) (pipeline.Counts, error) {
	var counts pipeline.Counts
	if len(items) == 0 {
		return counts, nil
	}
	ds := make([]pipeline.Delivery, len(items))
	for i, it := range items {
		ds[i] = it.delivery
	}
	w.released += int64(len(items))
	outcomes, err := w.applyDeliveries(ctx, ds, func(f pipeline.Failure) { w.deadLetter(f, ds[f.Index]) })
	if err != nil {
		return counts, err
	}
	counts.Fetched = int64(len(items))
	var resolved []uuid.UUID
	for i, it := range items {
		counts.Add(outcomes[i])
		// A failure of a message with a stream sequence updates its dead letter;
		// one without (recorded before sequences were kept) gets a new one.
		if it.orphan && (outcomes[i] != pipeline.Failed || it.delivery.StreamSeq == 0) {
			resolved = append(resolved, it.uid)
		}
	}
	if len(resolved) > 0 {
		if _, err := w.tx.Exec(ctx, resolveReleasedOrphansSQL, resolved, "released: the parent it waited for was applied"); err != nil {
			return counts, err
		}
	}
	return counts, nil
}

// releaseAfterCommit is the re-check after a commit: it releases the children and
// orphans waiting for any of keys whose parent is applied now, and repeats for
// what that applies and parks, and for what the bounds left behind, as long as it
// makes progress. A failure is logged, not returned: the transaction it follows
// has committed, and the sweeper will find the children.
func (s *Store) releaseAfterCommit(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, batchUID uuid.UUID, keys []parentKey) {
	for round := 0; len(keys) > 0 && round < 1000; round++ {
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

// releaseReady releases, in a transaction of its own, what is releasable for keys,
// and returns the keys to re-check next (none when nothing was released).
func (s *Store) releaseReady(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, batchUID uuid.UUID, keys []parentKey) ([]parentKey, error) {
	set := map[parentKey]bool{}
	for _, k := range keys {
		set[k] = true
	}
	keys = sortedKeys(set)
	entities, hashes := keyArrays(keys)
	var any bool
	if err := s.pool.QueryRow(ctx, anyReleasableSQL, entities, hashes).Scan(&any); err != nil || !any {
		return nil, err
	}
	var (
		w     *txWork
		items []releasedItem
		more  bool
	)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) (err error) {
		w = s.newWork(tx, batchUID, cat, rules)
		if items, more, err = w.takeReleased(ctx, keys); err != nil {
			return err
		}
		if _, err := w.applyReleased(ctx, items); err != nil {
			return err
		}
		return w.finish(ctx, pipeline.Counts{}, false)
	})
	if err != nil {
		return nil, fmt.Errorf("releasing children: %w", classify(err))
	}
	w.logDeadLetters()
	w.noteCheckpoints()
	if len(items) == 0 {
		return nil, nil
	}
	next := w.recheck
	if more {
		next = append(next, keys...)
	}
	return next, nil
}
