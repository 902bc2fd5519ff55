package backfill

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
)

// Store keeps the schedules and their progress (internal/store implements it in
// bridge.background_sync_schedule).
type Store interface {
	DueSchedules(ctx context.Context, now time.Time, entity string) ([]Schedule, error)
	LockBackfill(ctx context.Context, entity string) (func(), bool, error)
	StartCycle(ctx context.Context, entity string, total, rowsPerDay int64, at time.Time) error
	OpenBackfillBatch(ctx context.Context, entity, replica string) (uuid.UUID, error)
	SaveProgress(ctx context.Context, entity, cursor string, n int64, windowStart time.Time, batchUID uuid.UUID) error
	FinishBackfillRun(ctx context.Context, entity string, batchUID uuid.UUID, at time.Time, next *time.Time, completed bool, failure error) error
}

// Message is one row to publish.
type Message struct {
	Subject string
	// ID is the Nats-Msg-Id: entity, business key and rowversion, so that a row
	// published twice inside the duplicate window is stored once.
	ID   string
	Body []byte
}

// Publisher publishes a page and returns once JetStream acknowledged every message
// (stream.Publisher).
type Publisher interface {
	PublishAll(ctx context.Context, msgs []Message) error
}

// Runner runs due schedules: it pages through the source from the schedule's
// cursor, publishes each page to apismith.backfill.<entity>, and advances the
// cursor only after JetStream acknowledged the page, until the night's quota, the
// window's end or the table's end.
type Runner struct {
	Store     Store
	Source    Source
	Publisher Publisher
	Catalog   *catalog.Catalog
	// Now is the clock (default time.Now).
	Now     func() time.Time
	Replica string
	Logger  *slog.Logger
	// RetryAfter is when a failed run is due again (default 5m).
	RetryAfter time.Duration
	// VerifySettle is a verify night's Verifier.Settle (default 2s).
	VerifySettle time.Duration
	// NewUID makes verification uids (default UUIDv7).
	NewUID func() uuid.UUID
}

// Result is what one schedule's run did.
type Result struct {
	Entity    string
	Published int64
	Completed bool
	NextRun   *time.Time
	Skipped   string // why nothing ran, when nothing did
	// Verified is a verify night's verification (nil in publish mode).
	Verified *VerifyResult
}

// RunDue runs every due schedule (only entity's when set) once.
func (r *Runner) RunDue(ctx context.Context, entity string) ([]Result, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	*r = r.withDefaults()
	now := r.now()
	due, err := r.Store.DueSchedules(ctx, now, entity)
	if err != nil {
		return nil, err
	}
	var results []Result
	var errs []error
	for _, s := range due {
		res, err := r.run(ctx, s)
		results = append(results, res)
		if err != nil {
			errs = append(errs, fmt.Errorf("backfill of %s: %w", s.Entity, err))
		}
	}
	return results, errors.Join(errs...)
}

func (r *Runner) now() time.Time { return r.Now() }

func (r Runner) withDefaults() Runner {
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	r.RetryAfter = cmp.Or(r.RetryAfter, 5*time.Minute)
	return r
}

// Validate says what the runner is missing.
func (r Runner) Validate() error {
	var errs []error
	if r.Store == nil || r.Source == nil || r.Publisher == nil || r.Catalog == nil {
		errs = append(errs, errors.New("backfill runner: a store, a source, a publisher and a catalog are required"))
	}
	if r.Replica == "" {
		errs = append(errs, errors.New("backfill runner: the replica name is empty"))
	}
	if r.RetryAfter < 0 {
		errs = append(errs, errors.New("backfill runner: the retry period must not be negative"))
	}
	return errors.Join(errs...)
}

func (r *Runner) run(ctx context.Context, s Schedule) (res Result, err error) {
	res.Entity = s.Entity
	e, ok := r.Catalog.Entity(s.Entity)
	if !ok {
		return res, fmt.Errorf("%s: disable or fix its schedule", r.Catalog.Unknown(s.Entity))
	}
	w, err := windowOf(s)
	if err != nil {
		return res, err
	}
	release, ok, err := r.Store.LockBackfill(ctx, s.Entity)
	if err != nil {
		return res, err
	}
	if !ok {
		res.Skipped = "another backfill of this entity is running"
		return res, nil
	}
	defer release()

	now := r.now()
	if s.TotalRows == nil {
		total, err := r.Source.Count(ctx, s.Entity)
		if err != nil {
			return res, r.finish(ctx, s.Entity, uuid.Nil, now, nil, false, err)
		}
		rpd := RowsPerDay(total, s.Days)
		if err := r.Store.StartCycle(ctx, s.Entity, total, rpd, now); err != nil {
			return res, err
		}
		s.TotalRows, s.RowsPerDay, s.Cursor, s.Offset = &total, &rpd, nil, 0
		r.Logger.Info("backfill cycle started", "entity", s.Entity, "total_rows", total, "rows_per_day", rpd, "days", s.Days)
	}
	var windowStarted time.Time
	if s.WindowStarted != nil {
		windowStarted = *s.WindowStarted
	}
	plan := PlanRun(w, now, *s.RowsPerDay, windowStarted, s.WindowRows)
	if !plan.Run {
		res.Skipped, res.NextRun = "outside the window or the night's quota is done", &plan.NextRun
		return res, r.finish(ctx, s.Entity, uuid.Nil, now, &plan.NextRun, false, nil)
	}
	batchUID, err := r.Store.OpenBackfillBatch(ctx, s.Entity, r.Replica)
	if err != nil {
		return res, err
	}
	if s.Mode == ModeVerify {
		return r.verifyNight(ctx, s, w, plan, batchUID)
	}
	cursor := ""
	if s.Cursor != nil {
		cursor = *s.Cursor
	}
	quota := plan.Quota
	for quota > 0 {
		if ctx.Err() != nil {
			return res, r.finish(ctx, s.Entity, batchUID, r.now(), nil, false, ctx.Err())
		}
		if !plan.Window.Contains(r.now()) {
			next := w.Next(r.now()).Start
			res.NextRun = &next
			return res, r.finish(ctx, s.Entity, batchUID, r.now(), &next, false, nil)
		}
		limit := int(min(int64(s.PageSize), quota))
		rows, next, more, err := r.Source.Page(ctx, s.Entity, cursor, limit)
		if err != nil {
			return res, r.finish(ctx, s.Entity, batchUID, r.now(), nil, false, fmt.Errorf("reading the page after %q (offset %d; the next run resumes there): %w", cursor, s.Offset+res.Published, err))
		}
		if len(rows) > 0 {
			msgs, err := messages(e, rows, r.Catalog.SourceSystem)
			if err != nil {
				return res, r.finish(ctx, s.Entity, batchUID, r.now(), nil, false, err)
			}
			if err := r.Publisher.PublishAll(ctx, msgs); err != nil {
				return res, r.finish(ctx, s.Entity, batchUID, r.now(), nil, false, fmt.Errorf("publishing the page after %q (offset %d; the next run resumes there): %w", cursor, s.Offset+res.Published, err))
			}
			if !more {
				next = cursor // the cycle ends: keep the last full position
			}
			if err := r.Store.SaveProgress(ctx, s.Entity, next, int64(len(rows)), plan.Window.Start, batchUID); err != nil {
				return res, err
			}
			res.Published += int64(len(rows))
			quota -= int64(len(rows))
			cursor = next
		}
		if !more {
			res.Completed = true
			var nextRun *time.Time
			if s.Continuous {
				n := w.Next(r.now()).Start
				nextRun = &n
			}
			res.NextRun = nextRun
			r.Logger.Info("backfill cycle completed", "entity", s.Entity, "rows", s.Offset+res.Published)
			return res, r.finish(ctx, s.Entity, batchUID, r.now(), nextRun, true, nil)
		}
	}
	next := w.Next(r.now()).Start
	res.NextRun = &next
	r.Logger.Info("backfill: the night's quota is done", "entity", s.Entity, "published", res.Published, "next_run_at", next)
	return res, r.finish(ctx, s.Entity, batchUID, r.now(), &next, false, nil)
}

// verifyNight runs a schedule in verify mode: it compares the entity with the
// source and publishes the drifted rows, at most the night's quota (the rest
// waits for the next night, which compares again). The schedule is due again at
// the next window's start.
func (r *Runner) verifyNight(ctx context.Context, s Schedule, w Window, plan Plan, batchUID uuid.UUID) (res Result, err error) {
	res.Entity = s.Entity
	ks, okSource := r.Source.(KeySource)
	vs, okStore := r.Store.(VerifyStore)
	if !okSource || !okStore {
		return res, r.finish(ctx, s.Entity, batchUID, r.now(), nil, false, errors.New("verify mode needs a source that pages keys and looks rows up, and a store that compares"))
	}
	v := Verifier{Store: vs, Source: ks, Publisher: r.Publisher, Catalog: r.Catalog, PageSize: s.PageSize, Settle: r.VerifySettle,
		NewUID: r.NewUID, Now: r.Now, Replica: r.Replica, Logger: r.Logger}
	// The night ends with its window: a verification still running then stops
	// (and is due again at the next window).
	nctx, cancel := context.WithTimeout(ctx, plan.Window.End.Sub(r.now())) // the runner's clock may not be the wall's
	defer cancel()
	vr, err := v.Verify(nctx, s.Entity, VerifyOptions{Repair: true, MaxPublish: plan.Quota, Trigger: "schedule", Record: true})
	if vr.Published > 0 {
		// Counted against the night's quota even when the night failed after
		// publishing some: a retry must not publish them again.
		if err := r.Store.SaveProgress(ctx, s.Entity, "", vr.Published, plan.Window.Start, batchUID); err != nil {
			return res, err
		}
	}
	if err != nil {
		if ctx.Err() == nil && nctx.Err() != nil {
			err = fmt.Errorf("the window ended before the verification did (it is due again at the next window): %w", err)
		}
		return res, r.finish(ctx, s.Entity, batchUID, r.now(), nil, false, fmt.Errorf("verify night: %w", err))
	}
	res.Published, res.Completed, res.Verified = vr.Published, !vr.Capped, &vr
	next := w.Next(r.now()).Start
	res.NextRun = &next
	r.Logger.Info("verify night", "entity", s.Entity, "drifted", vr.Drifted(), "counts", vr.Comparison.Counts,
		"published", vr.Published, "capped_by_quota", vr.Capped, "next_run_at", next)
	return res, r.finish(ctx, s.Entity, batchUID, r.now(), &next, true, nil)
}

// finish records the run and returns failure (the run's error, if any).
func (r *Runner) finish(ctx context.Context, entity string, batchUID uuid.UUID, at time.Time, next *time.Time, completed bool, failure error) error {
	fctx := context.WithoutCancel(ctx)
	if failure != nil && next == nil {
		retry := at.Add(r.RetryAfter)
		next = &retry
	}
	if err := r.Store.FinishBackfillRun(fctx, entity, batchUID, at, next, completed, failure); err != nil {
		return errors.Join(failure, err)
	}
	return failure
}

func windowOf(s Schedule) (Window, error) {
	start, err := ParseClock(s.WindowStart)
	if err != nil {
		return Window{}, err
	}
	end, err := ParseClock(s.WindowEnd)
	if err != nil {
		return Window{}, err
	}
	loc, err := time.LoadLocation(s.TimeZone)
	if err != nil {
		return Window{}, fmt.Errorf("time zone %q: %v", s.TimeZone, err)
	}
	return Window{Start: start, End: end, Location: loc}, nil
}

// messages turns source rows into backfill events with their message ids.
func messages(e *catalog.Entity, rows []SourceRow, sourceSystem string) ([]Message, error) {
	out := make([]Message, len(rows))
	for i, row := range rows {
		key := make([]string, len(e.Key))
		for j, f := range e.Key {
			v, ok := event.KeyValue(field(row.Data, f))
			if !ok {
				return nil, fmt.Errorf("a source row of %s has no key field %s", e.Name, f)
			}
			key[j] = v
		}
		body, err := json.Marshal(struct {
			Entity       string          `json:"entity"`
			Op           string          `json:"op"`
			SourceSystem string          `json:"source_system"`
			RowVersion   json.RawMessage `json:"rowversion"`
			Data         map[string]any  `json:"data"`
		}{e.Name, "upsert", sourceSystem, row.RowVersion, row.Data})
		if err != nil {
			return nil, err
		}
		var rv string
		if err := json.Unmarshal(row.RowVersion, &rv); err != nil {
			rv = string(row.RowVersion)
		}
		out[i] = Message{Subject: event.Backfill.Subject(e.Name), ID: messageID(e.Name, key, rv), Body: body}
	}
	return out, nil
}

// messageID is a backfill message's Nats-Msg-Id: entity, business-key hash and
// rowversion. The hash (event.HashKey) encodes the key's parts unambiguously:
// joining them with a separator made ("A|B", "1") and ("A", "B|1") one id, and
// JetStream dropped the second row as a duplicate.
func messageID(entity string, key []string, rowversion string) string {
	return entity + ":" + event.HashKey(key) + ":" + rowversion
}

// field finds a field case-insensitively, as normalization will.
func field(data map[string]any, name string) any {
	if v, ok := data[name]; ok {
		return v
	}
	for k, v := range data {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return nil
}
