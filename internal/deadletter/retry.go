package deadletter

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Selection chooses unresolved dead letters to re-run.
type Selection struct {
	// Due chooses the ones whose automatic retry is due (the retry worker); the
	// other fields are then ignored.
	Due bool
	// UIDs, Entity and Stage narrow the choice; all empty means every unresolved one.
	UIDs   []uuid.UUID
	Entity string
	Stage  string
}

// RetryResult counts what a retry run did.
type RetryResult struct {
	Retried, Resolved, FailedAgain int
	// More is set when the run's bounds left chosen dead letters for the next.
	More bool
}

// Retry re-runs chosen dead letters through the current pipeline (the current
// catalog and mapping rules), in one transaction. One that now gets any outcome
// but failed (applied, unchanged, stale, parked) is resolved; one that fails again
// records the new stage and error, keeps the old ones in its history, and is
// scheduled again while its stage is retried by itself and retries remain.
//
// A record that fails in a way that ends the transaction (anything but an
// unavailable database or a conflict) does not hold back the others: the run is
// done again with every record under a savepoint of its own, and the one to blame
// fails again at stage write, its next retry pushed back.
func (d *DeadLetters) Retry(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, replica string, sel Selection) (RetryResult, error) {
	res, blamed, err := d.retry(ctx, cat, rules, replica, sel, false)
	if err != nil && blamed {
		res, _, err = d.retry(ctx, cat, rules, replica, sel, true)
	}
	return res, err
}

func (d *DeadLetters) retry(ctx context.Context, cat *catalog.Catalog, rules *mapping.Set, replica string, sel Selection, isolate bool) (RetryResult, bool, error) {
	var (
		res RetryResult
		w   *apply.Work
	)
	err := d.Store.InTx(ctx, func(tx Tx) error {
		res = RetryResult{}
		rows, more, err := tx.SelectDeadLetters(ctx, sel, d.cfg.RoundLimit, apply.ReleaseBytes)
		if err != nil || len(rows) == 0 {
			return err
		}
		res.More = more
		ds := make([]pipeline.Delivery, len(rows))
		entity := rows[0].Entity
		for i, r := range rows {
			ds[i] = r.Delivery
			if r.Entity != entity {
				entity = "several"
			}
		}
		batch := apply.BatchRow{UID: d.cfg.NewUID(), Entity: entity, SourceSystem: cat.SourceSystem, SyncType: "realtime", Replica: replica}
		if err := tx.CountBatch(ctx, batch, pipeline.Counts{}, false); err != nil {
			return err
		}
		w = d.Applier.Work(tx, batch, cat, rules)
		w.BlameAnyError()
		if isolate {
			w.IsolateRecords()
		}
		failures := map[int]pipeline.Failure{}
		outcomes, err := w.ApplyDeliveries(ctx, ds, func(f pipeline.Failure) { failures[f.Index] = f })
		if err != nil {
			return err
		}
		counts := pipeline.Counts{Fetched: int64(len(rows))}
		resolved := map[pipeline.Outcome][]uuid.UUID{}
		for i, r := range rows {
			counts.Add(outcomes[i])
			f, failed := failures[i]
			if !failed {
				resolved[outcomes[i]] = append(resolved[outcomes[i]], r.UID)
				res.Resolved++
				continue
			}
			if err := tx.FailedAgain(ctx, r.UID, f, d.nextRetry(f.Stage, r.Retries, r.MaxRetries)); err != nil {
				return err
			}
			res.FailedAgain++
		}
		for _, o := range slices.Sorted(maps.Keys(resolved)) {
			if err := tx.ResolveDeadLetters(ctx, resolved[o], "retried: "+string(o)); err != nil {
				return err
			}
		}
		res.Retried = len(rows)
		return w.Finish(ctx, counts, true)
	})
	if err != nil {
		return res, w != nil && w.Blames(err), err
	}
	if w != nil {
		d.Applier.Committed(ctx, w)
	}
	return res, false, nil
}

// nextRetry says when a dead letter that failed again is retried next: after the
// policy's delay, while its stage is retried by itself and retries remain.
func (d *DeadLetters) nextRetry(stage pipeline.Stage, retries, maxRetries int) *time.Duration {
	if maxRetries <= 0 {
		maxRetries = d.cfg.Retry.MaxRetries
	}
	if !stage.Retried() || retries+1 >= maxRetries {
		return nil
	}
	after := d.cfg.Retry.Delay(retries + 1)
	return &after
}
