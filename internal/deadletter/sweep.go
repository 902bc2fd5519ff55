package deadletter

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// ParkedSelection chooses parked children for a sweep.
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
}

// Manual reports whether the selection is an operator's ("re-check these now"),
// which neither uses up a child's re-checks nor orphans it.
func (sel ParkedSelection) Manual() bool {
	return !sel.Expire && (len(sel.UIDs) > 0 || sel.All)
}

// SweepResult counts what one sweep did with the parked children it examined.
type SweepResult struct {
	Examined, Released, Orphaned, Waiting int
	// More is set when the sweep left due rows for the next one (its bounds).
	More bool
}

// Sweep re-checks parked children that are due (or the ones sel names) in one
// transaction: a child whose parent has been applied since is released through
// the pipeline; one that has used up its re-checks becomes a dead letter at stage
// orphan, naming the parent it waited for (whose arrival still releases it); the
// others wait twice as long as last time. The sweep is counted in a sync_batches
// row of its own; replica names who swept.
func (d *DeadLetters) Sweep(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, replica string, sel ParkedSelection) (SweepResult, error) {
	var (
		res SweepResult
		w   *apply.Work
	)
	err := d.Store.InTx(ctx, func(tx Tx) error {
		res = SweepResult{}
		rows, err := tx.SelectParked(ctx, sel, d.cfg.RoundLimit)
		if err != nil {
			return err
		}
		// The sweep's own round also releases orphans whose parent is applied:
		// the safety net for a parent whose re-checks after its commit did not run.
		var orphans []apply.Released
		if len(sel.UIDs) == 0 && !sel.Expire {
			var more bool
			if orphans, more, err = tx.TakeReleasableOrphans(ctx, apply.ReleaseLimit, apply.ReleaseBytes); err != nil {
				return err
			}
			res.More = more
		}
		if len(rows) == 0 && len(orphans) == 0 {
			return nil
		}
		res.Examined = len(rows) + len(orphans)
		res.More = res.More || len(sel.UIDs) == 0 && len(rows) == d.cfg.RoundLimit
		batch := apply.BatchRow{UID: d.cfg.NewUID(), Entity: entityOf(rows, orphans), SourceSystem: cat.SourceSystem, SyncType: "realtime", Replica: replica}
		if err := tx.CountBatch(ctx, batch, pipeline.Counts{}, false); err != nil { // the rows written reference it
			return err
		}
		w = d.Applier.Work(tx, batch, cat, rules)
		orphanCounts, err := w.ApplyReleased(ctx, orphans)
		if err != nil {
			return err
		}
		keys := map[apply.Key]bool{}
		for _, r := range rows {
			keys[r.Parent] = true
		}
		present, err := tx.ParentsPresent(ctx, apply.SortedKeys(keys))
		if err != nil {
			return err
		}
		plan := PlanSweep(rows, present, sel, d.cfg.Park.MaxRetries)
		if plan.Deferred > 0 {
			res.More = true
		}
		if err := d.wait(ctx, tx, plan.Wait); err != nil {
			return err
		}
		// A parent committing meanwhile skips the rows this holds (in its
		// release and in its re-check): they are re-checked after the commit.
		for _, r := range plan.Wait {
			w.Recheck(r.Parent)
		}
		if err := d.orphan(ctx, tx, w, batch, plan.Orphan); err != nil {
			return err
		}
		items, err := tx.TakeParked(ctx, uids(plan.Release))
		if err != nil {
			return err
		}
		counts, err := w.ApplyReleased(ctx, items)
		if err != nil {
			return err
		}
		// A released child may wait again, for another of its parents.
		children := make([]apply.Key, len(plan.Release))
		for i, r := range plan.Release {
			children[i] = r.Child
		}
		reparked, err := tx.ParkedChildren(ctx, children)
		if err != nil {
			return err
		}
		expired := 0
		if sel.Expire && len(reparked) > 0 {
			if err := d.orphan(ctx, tx, w, batch, reparked); err != nil {
				return err
			}
			counts.Parked -= int64(len(reparked))
			counts.Failed += int64(len(reparked))
			expired, reparked = len(reparked), nil
		}
		counts.Merge(orphanCounts)
		res.Released = len(plan.Release) - len(reparked) - expired + len(orphans)
		res.Orphaned = len(plan.Orphan) + expired
		res.Waiting = len(plan.Wait) + len(reparked) + plan.Deferred + len(plan.Untouched)
		// Every examined row has one outcome: released ones theirs (counted by
		// ApplyReleased), orphans failed, the others still parked.
		stillParked := len(plan.Wait) + plan.Deferred + len(plan.Untouched)
		counts.Fetched += int64(len(plan.Orphan) + stillParked)
		counts.Failed += int64(len(plan.Orphan))
		counts.Parked += int64(stillParked)
		return w.Finish(ctx, counts, true)
	})
	if err == nil && w != nil {
		d.Applier.Committed(ctx, w)
	}
	return res, err
}

// SweepPlan is what a sweep does with the rows it examined.
type SweepPlan struct {
	Release   []Parked // the parent is applied
	Orphan    []Parked // waited too long (or expired by hand)
	Wait      []Parked // re-checked, not yet: wait longer
	Untouched []Parked // a manual release of a child whose parent is still missing
	Deferred  int      // releasable, left for the next sweep by the byte bound
}

// PlanSweep decides, for each examined row, release, orphan or wait. A release
// holds at most apply.ReleaseBytes of events (at least one child).
func PlanSweep(rows []Parked, present map[apply.Key]bool, sel ParkedSelection, maxRetries int) SweepPlan {
	var p SweepPlan
	var bytes int64
	for _, r := range rows {
		limit := r.MaxRetries
		if limit <= 0 {
			limit = maxRetries
		}
		switch {
		case present[r.Parent]:
			if len(p.Release) > 0 && bytes+r.Size > apply.ReleaseBytes {
				p.Deferred++
				continue
			}
			bytes += r.Size
			p.Release = append(p.Release, r)
		case sel.Expire:
			p.Orphan = append(p.Orphan, r)
		case sel.Manual():
			p.Untouched = append(p.Untouched, r)
		case r.Retries+1 >= limit:
			p.Orphan = append(p.Orphan, r)
		default:
			p.Wait = append(p.Wait, r)
		}
	}
	return p
}

func (d *DeadLetters) wait(ctx context.Context, tx Tx, rows []Parked) error {
	if len(rows) == 0 {
		return nil
	}
	delays := make([]time.Duration, len(rows))
	for i, r := range rows {
		delays[i] = d.cfg.Park.Delay(r.Retries + 1)
	}
	return tx.WaitParked(ctx, uids(rows), delays)
}

// orphan turns rows into orphan dead letters; their parents are re-checked after
// the commit, as a parent may be committing at this very moment.
func (d *DeadLetters) orphan(ctx context.Context, tx Tx, w *apply.Work, batch apply.BatchRow, rows []Parked) error {
	if len(rows) == 0 {
		return nil
	}
	orphans := make([]Orphan, len(rows))
	for i, r := range rows {
		orphans[i] = Orphan{UID: r.UID, DeadLetterUID: d.cfg.NewUID(), Reason: fmt.Sprintf(
			"parent %s %s was never applied: the child waited since %s and was re-checked %d times; the parent's arrival still releases it",
			r.Parent.Entity, r.ParentKey, r.Created.UTC().Format(time.RFC3339), r.Retries)}
		w.Recheck(r.Parent)
	}
	logged, err := tx.OrphanParked(ctx, batch, orphans, d.cfg.Retry.MaxRetries)
	if err != nil {
		return err
	}
	w.Logged(logged...)
	return nil
}

// entityOf names the entity of the sweep's batch row: the one entity of the rows
// it examined, or "several".
func entityOf(rows []Parked, orphans []apply.Released) string {
	names := map[string]bool{}
	for _, r := range rows {
		names[r.Child.Entity] = true
	}
	for _, o := range orphans {
		names[event.SubjectEntity(o.Delivery.Subject)] = true
	}
	if len(names) == 1 {
		for n := range names {
			return n
		}
	}
	return "several"
}

func uids(rows []Parked) []uuid.UUID {
	out := make([]uuid.UUID, len(rows))
	for i, r := range rows {
		out[i] = r.UID
	}
	return out
}
