package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/syncflow/syncflow/internal/backfill"
)

const scheduleColumns = `uid, entity_name, is_enabled, to_char(sync_window_start, 'HH24:MI'), to_char(sync_window_end, 'HH24:MI'),
	time_zone, days_to_complete, total_rows, rows_per_day, current_offset, current_cursor, page_size, continuous,
	cycle_started_at, window_started_at, window_rows, last_run_at, next_run_at, completed_at, last_error, mode`

func scanSchedule(r pgx.CollectableRow) (backfill.Schedule, error) {
	var s backfill.Schedule
	err := r.Scan(&s.UID, &s.Entity, &s.Enabled, &s.WindowStart, &s.WindowEnd, &s.TimeZone, &s.Days, &s.TotalRows, &s.RowsPerDay,
		&s.Offset, &s.Cursor, &s.PageSize, &s.Continuous, &s.CycleStarted, &s.WindowStarted, &s.WindowRows, &s.LastRun,
		&s.NextRun, &s.Completed, &s.LastError, &s.Mode)
	return s, err
}

// Schedules returns every schedule, by entity.
func (s *Store) Schedules(ctx context.Context) ([]backfill.Schedule, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+scheduleColumns+` FROM bridge.background_sync_schedule ORDER BY entity_name`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanSchedule)
}

// Schedule returns one entity's schedule.
func (s *Store) Schedule(ctx context.Context, entity string) (backfill.Schedule, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+scheduleColumns+` FROM bridge.background_sync_schedule WHERE entity_name = $1`, entity)
	if err != nil {
		return backfill.Schedule{}, err
	}
	sc, err := pgx.CollectExactlyOneRow(rows, scanSchedule)
	if errors.Is(err, pgx.ErrNoRows) {
		return sc, ErrNotFound
	}
	return sc, err
}

// SetSchedule creates or changes an entity's schedule. A new schedule is disabled
// until enabled. Changing days_to_complete recomputes rows_per_day.
func (s *Store) SetSchedule(ctx context.Context, entity string, set backfill.Settings) error {
	_, err := s.pool.Exec(ctx, `
		INSERT INTO bridge.background_sync_schedule AS b (uid, entity_name, sync_window_start, sync_window_end, time_zone, days_to_complete, page_size, continuous, mode)
		VALUES ($1, $2, coalesce($3::time, '19:00'), coalesce($4::time, '07:00'), coalesce($5, 'UTC'), coalesce($6, 7), coalesce($7, 500), coalesce($8, false), coalesce($9, 'publish'))
		ON CONFLICT (entity_name) DO UPDATE SET
			sync_window_start = coalesce($3::time, b.sync_window_start), sync_window_end = coalesce($4::time, b.sync_window_end),
			time_zone = coalesce($5, b.time_zone), days_to_complete = coalesce($6, b.days_to_complete),
			page_size = coalesce($7, b.page_size), continuous = coalesce($8, b.continuous), mode = coalesce($9, b.mode),
			-- A new mode starts its night's quota afresh (the rows the other
			-- mode published tonight are not this mode's).
			window_rows = CASE WHEN $9 IS DISTINCT FROM NULL AND $9 <> b.mode THEN 0 ELSE b.window_rows END,
			window_started_at = CASE WHEN $9 IS DISTINCT FROM NULL AND $9 <> b.mode THEN NULL ELSE b.window_started_at END,
			completed_at = CASE WHEN $9 IS DISTINCT FROM NULL AND $9 <> b.mode THEN NULL ELSE b.completed_at END,
			rows_per_day = CASE WHEN b.total_rows IS NULL THEN NULL
			                    ELSE greatest(1, ceil(b.total_rows::numeric / coalesce($6, b.days_to_complete)))::bigint END,
			next_run_at = NULL`,
		s.NewUID(), entity, set.WindowStart, set.WindowEnd, set.TimeZone, set.Days, set.PageSize, set.Continuous, set.Mode)
	return err
}

// EnableSchedule turns a schedule on or off; it returns ErrNotFound when there is none.
func (s *Store) EnableSchedule(ctx context.Context, entity string, on bool) error {
	tag, err := s.pool.Exec(ctx, `UPDATE bridge.background_sync_schedule SET is_enabled = $2, next_run_at = NULL WHERE entity_name = $1`, entity, on)
	if err == nil && tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return err
}

// ResetSchedule starts the entity's cycle again from the first row.
func (s *Store) ResetSchedule(ctx context.Context, entity string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE bridge.background_sync_schedule SET total_rows = NULL, rows_per_day = NULL, current_offset = 0,
		current_cursor = NULL, cycle_started_at = NULL, window_started_at = NULL, window_rows = 0, next_run_at = NULL,
		completed_at = NULL, last_error = NULL WHERE entity_name = $1`, entity)
	if err == nil && tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return err
}

// DueSchedules returns the enabled schedules whose next run is due at now (or not
// yet planned), optionally only entity's.
func (s *Store) DueSchedules(ctx context.Context, now time.Time, entity string) ([]backfill.Schedule, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+scheduleColumns+` FROM bridge.background_sync_schedule
		WHERE is_enabled AND (completed_at IS NULL OR continuous OR mode = 'verify') AND (next_run_at IS NULL OR next_run_at <= $1)
		  AND ($2 = '' OR entity_name = $2)
		ORDER BY next_run_at NULLS FIRST, entity_name`, now, entity)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanSchedule)
}

// LockBackfill takes a session lock that only one backfill of entity can hold at a
// time, on a connection of its own; ok is false when another run holds it.
func (s *Store) LockBackfill(ctx context.Context, entity string) (release func(), ok bool, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, false, err
	}
	sum := sha256.Sum256([]byte("syncflow:backfill:" + entity))
	key := int64(binary.BigEndian.Uint64(sum[:8]))
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&ok); err != nil || !ok {
		conn.Release()
		return nil, false, err
	}
	return func() {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = conn.Exec(c, `SELECT pg_advisory_unlock($1)`, key)
		conn.Release()
	}, true, nil
}

// StartCycle begins a cycle: the row count, the quota, the cursor at the start.
func (s *Store) StartCycle(ctx context.Context, entity string, total, rowsPerDay int64, at time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE bridge.background_sync_schedule SET total_rows = $2, rows_per_day = $3, current_offset = 0,
		current_cursor = NULL, cycle_started_at = $4, completed_at = NULL, last_error = NULL WHERE entity_name = $1`, entity, total, rowsPerDay, at)
	return err
}

// OpenBackfillBatch creates the sync_batches row of one backfill run.
func (s *Store) OpenBackfillBatch(ctx context.Context, entity, replica string) (uuid.UUID, error) {
	uid := s.NewUID()
	_, err := s.pool.Exec(ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, replica) VALUES ($1, $2, 'background', 'running', $3)`, uid, entity, replica)
	return uid, err
}

// SaveProgress records a page JetStream acknowledged: the cursor after it, n more
// rows in the cycle and in the window that started at windowStart, in the schedule
// and in the run's batch, in one transaction.
func (s *Store) SaveProgress(ctx context.Context, entity, cursor string, n int64, windowStart time.Time, batchUID uuid.UUID) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE bridge.background_sync_schedule SET current_cursor = $2, current_offset = current_offset + $3,
			window_rows = CASE WHEN window_started_at = $4 THEN window_rows + $3 ELSE $3 END, window_started_at = $4
			WHERE entity_name = $1`, entity, cursor, n, windowStart); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE bridge.sync_batches SET rows_fetched = rows_fetched + $2, rows_published = rows_published + $2 WHERE uid = $1`, batchUID, n)
		return err
	})
}

// FinishBackfillRun records the end of a run: when to run next, whether the cycle
// completed (and restarts, for a continuous schedule), the error if it failed; it
// closes the run's batch.
func (s *Store) FinishBackfillRun(ctx context.Context, entity string, batchUID uuid.UUID, at time.Time, next *time.Time, completed bool, failure error) error {
	var msg *string
	if failure != nil {
		m := sanitizeText(failure.Error())
		msg = &m
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE bridge.background_sync_schedule SET last_run_at = $2, next_run_at = $3, last_error = $4,
			completed_at = CASE WHEN $5 THEN $2 ELSE completed_at END,
			current_cursor = CASE WHEN $5 AND continuous THEN NULL ELSE current_cursor END,
			total_rows = CASE WHEN $5 AND continuous THEN NULL ELSE total_rows END
			WHERE entity_name = $1`, entity, at, next, msg, completed); err != nil {
			return err
		}
		if batchUID == uuid.Nil {
			return nil
		}
		status := "completed"
		if failure != nil {
			status = "failed"
		}
		_, err := tx.Exec(ctx, `UPDATE bridge.sync_batches SET status = $2, error_message = $3, finished_at = greatest(now(), started_at) WHERE uid = $1`,
			batchUID, status, msg)
		return err
	})
}
