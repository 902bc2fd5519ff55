package apply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

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
// child at its next re-check, and an orphan whose parent is applied in its next
// round.
//
// # Bounded releases
//
// One release takes at most ReleaseLimit children and ReleaseBytes of their
// events: a site with 30,000 waiting work centers is released over several
// transactions, never all at once in one. What a transaction leaves is released by
// the re-checks after its commit, and is marked due for the sweeper in case the
// process dies first.

// The bounds of one release.
const (
	ReleaseLimit = 1000
	ReleaseBytes = 4 << 20
)

// release applies, in this transaction, the children waiting for keys (parents
// this transaction applied), and so on down the catalog, within the bounds of one
// release per level.
func (w *Work) release(ctx context.Context, keys []Key) error {
	if len(keys) == 0 {
		return nil
	}
	items, more, err := w.tx.TakeReleased(ctx, keys, ReleaseLimit, ReleaseBytes)
	if err != nil {
		return err
	}
	return w.applyRelease(ctx, keys, items, more)
}

// applyRelease applies items, released for keys (more: the bounds left some
// behind), and has keys re-checked after the commit.
func (w *Work) applyRelease(ctx context.Context, keys []Key, items []Released, more bool) error {
	w.recheck = append(w.recheck, keys...)
	if more {
		if err := w.tx.MarkDue(ctx, keys); err != nil {
			return err
		}
	}
	_, err := w.ApplyReleased(ctx, items)
	return err
}

// ApplyReleased runs released children and orphans through the pipeline, as fresh
// deliveries: a failure now is recorded on the message's dead letter (a released
// orphan's own), and an orphan that got any other outcome is resolved. It counts
// what became of them.
func (w *Work) ApplyReleased(ctx context.Context, items []Released) (pipeline.Counts, error) {
	var counts pipeline.Counts
	if len(items) == 0 {
		return counts, nil
	}
	ds := make([]pipeline.Delivery, len(items))
	for i, it := range items {
		ds[i] = it.Delivery
	}
	w.released += int64(len(items))
	outcomes, err := w.ApplyDeliveries(ctx, ds, func(f pipeline.Failure) { w.DeadLetter(f, ds[f.Index]) })
	if err != nil {
		return counts, err
	}
	counts.Fetched = int64(len(items))
	var resolved []uuid.UUID
	for i, it := range items {
		counts.Add(outcomes[i])
		// A failure of a message with a stream sequence updates its dead letter;
		// one without (recorded before sequences were kept) gets a new one.
		if it.Orphan && (outcomes[i] != pipeline.Failed || it.Delivery.StreamSeq == 0) {
			resolved = append(resolved, it.UID)
		}
	}
	if len(resolved) > 0 {
		if err := w.tx.ResolveDeadLetters(ctx, resolved, "released: the parent it waited for was applied"); err != nil {
			return counts, err
		}
	}
	return counts, nil
}

// recheckAfterCommit is the re-check after a commit: it releases the children and
// orphans waiting for any of keys whose parent is applied now, and repeats for
// what that applies and parks, and for what the bounds left behind, as long as it
// makes progress. A failure is logged, not returned: the transaction it follows
// has committed, and the sweeper will find the children; the children of the
// round that failed are made due for it now (markDueAfter).
func (a *Applier) recheckAfterCommit(ctx context.Context, w *Work) {
	keys := w.recheck
	for round := 0; len(keys) > 0 && round < 1000; round++ {
		next, err := a.releaseReady(ctx, w, keys)
		if err != nil {
			if !errors.Is(ctx.Err(), context.Canceled) { // not a shutdown: a failure, or the re-check's time ran out
				a.cfg.Logger.Warn("re-checking parked children after a commit failed; the sweeper will release them", "err", err)
			}
			a.markDueAfter(ctx, keys)
			return
		}
		keys = next
	}
}

// markDueAfter makes the children waiting for those of keys that are applied
// due for the sweeper now, after a re-check round for keys failed: a round that
// failed after it had taken children leaves them parked, and a release that ran
// beside it skipped them, locked. Children of a parent still missing keep their
// time (a re-check of theirs counts towards their orphaning). Best effort, with
// a few seconds of its own (the re-check's context may be what ran out); the
// sweeper finds them at their next re-check otherwise.
func (a *Applier) markDueAfter(ctx context.Context, keys []Key) {
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	ready, err := a.Store.Releasable(mctx, keys)
	if err == nil && len(ready) > 0 {
		err = a.Store.InTx(mctx, func(tx Tx) error { return tx.MarkDue(mctx, ready) })
	}
	if err != nil {
		a.cfg.Logger.Warn("marking parked children due after a failed re-check failed; the sweeper will find them at their next re-check", "err", err)
	}
}

// releaseReady releases, in a transaction of its own counted in the batch of w,
// what is releasable for keys, and returns the keys to re-check next (none when
// nothing was released): the parents of what it applied, and, when the bounds
// left children behind, the parents it released for. A key with nothing waiting
// drops out: a child parked for it after the question re-checks its parent
// after its own commit. (Re-checking every key of the rounds before, the
// re-checks of a mass release of 30,000 children in rounds of 1,000 asked of
// 450,000 keys.)
func (a *Applier) releaseReady(ctx context.Context, w *Work, keys []Key) ([]Key, error) {
	set := map[Key]bool{}
	for _, k := range keys {
		set[k] = true
	}
	keys, err := a.Store.Releasable(ctx, SortedKeys(set))
	if err != nil || len(keys) == 0 {
		return nil, err
	}
	var (
		rw    *Work
		items []Released
		more  bool
	)
	err = a.Store.InTx(ctx, func(tx Tx) (err error) {
		rw = a.Work(tx, w.batch, w.cat, w.rules)
		if items, more, err = tx.TakeReleased(ctx, keys, ReleaseLimit, ReleaseBytes); err != nil {
			return err
		}
		if _, err := rw.ApplyReleased(ctx, items); err != nil {
			return err
		}
		return rw.Finish(ctx, pipeline.Counts{}, false)
	})
	if err != nil {
		return nil, fmt.Errorf("releasing children: %w", err)
	}
	a.log(rw)
	a.noteCheckpoints(rw)
	if len(items) == 0 {
		return nil, nil
	}
	next := rw.recheck
	if more {
		next = append(next, keys...)
	}
	return next, nil
}
