package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/syncflow/syncflow/internal/backfill"
)

// EntityStats is what the bridge tables say about one entity, for status and metrics.
type EntityStats struct {
	Entity string `json:"entity"`
	// Checkpoints per source system.
	Checkpoints []Checkpoint `json:"checkpoints"`
	// LastBatch is the latest realtime or background batch of the entity.
	LastBatch *BatchInfo `json:"last_batch"`
	// DeadLetters counts the unresolved dead letters by stage; OldestDeadLetter is
	// when the oldest of them was written.
	DeadLetters      map[string]int64 `json:"dead_letters"`
	OldestDeadLetter *time.Time       `json:"oldest_dead_letter"`
	// Parked counts the children of this entity waiting for a parent.
	Parked       int64      `json:"parked"`
	OldestParked *time.Time `json:"oldest_parked"`
	// Schedule is the entity's backfill schedule, if any.
	Schedule *backfill.Schedule `json:"backfill"`
}

// Checkpoint is a row of erp_sync_state.
type Checkpoint struct {
	SourceSystem string     `json:"source_system"`
	RowVersion   *string    `json:"last_sync_rowversion"`
	SyncedAt     *time.Time `json:"last_sync_timestamp"`
}

// BatchInfo summarizes one sync_batches row.
type BatchInfo struct {
	SyncType   string     `json:"sync_type"`
	Status     string     `json:"status"`
	Replica    *string    `json:"replica"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	Fetched    int64      `json:"rows_fetched"`
	Inserted   int64      `json:"rows_inserted"`
	Updated    int64      `json:"rows_updated"`
	Unchanged  int64      `json:"rows_unchanged"`
	Stale      int64      `json:"rows_stale"`
	Deleted    int64      `json:"rows_deleted"`
	Parked     int64      `json:"rows_parked"`
	Released   int64      `json:"rows_released"`
	Failed     int64      `json:"rows_failed"`
	Published  int64      `json:"rows_published"`
}

// The statements behind status and the gauges, which every replica runs every
// StatsInterval: each is served by an index whatever the size of the history
// (the plans are pinned by a test at a million batches).
const (
	// lastBatchesSQL takes, per entity, the newest batch from the end of
	// ix_sync_batches_entity (DISTINCT ON sorted the whole table).
	lastBatchesSQL = `
SELECT e.entity_name, b.sync_type, b.status, b.replica, b.started_at, b.finished_at, b.rows_fetched,
       b.rows_inserted, b.rows_updated, b.rows_unchanged, b.rows_stale, b.rows_deleted, b.rows_parked,
       b.rows_released, b.rows_failed, b.rows_published
FROM unnest($1::text[]) AS e (entity_name)
CROSS JOIN LATERAL (
    SELECT * FROM bridge.sync_batches b WHERE b.entity_name = e.entity_name ORDER BY b.started_at DESC LIMIT 1) b`
	deadLetterCountsSQL = `
SELECT entity_name, stage_failed, count(*), min(created_at) FROM bridge.failed_records
WHERE resolved_at IS NULL GROUP BY 1, 2`
	parkedCountsSQL = `SELECT child_entity, count(*), min(created_at) FROM bridge.pending_children GROUP BY 1`
)

// Stats returns the bridge's view of each of entities (in that order), with a few
// indexed queries over the whole set.
func (s *Store) Stats(ctx context.Context, entities []string) ([]EntityStats, error) {
	byName := make(map[string]*EntityStats, len(entities))
	out := make([]EntityStats, len(entities))
	for i, e := range entities {
		out[i] = EntityStats{Entity: e, DeadLetters: map[string]int64{}}
		byName[e] = &out[i]
	}
	get := func(e string) *EntityStats { return byName[e] }
	batch := &pgx.Batch{}
	batch.Queue(`SELECT entity_name, source_system, last_sync_rowversion, last_sync_timestamp FROM bridge.erp_sync_state ORDER BY 1, 2`).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var e string
				var c Checkpoint
				if err := rows.Scan(&e, &c.SourceSystem, &c.RowVersion, &c.SyncedAt); err != nil {
					return err
				}
				if st := get(e); st != nil {
					st.Checkpoints = append(st.Checkpoints, c)
				}
			}
			return rows.Err()
		})
	batch.Queue(lastBatchesSQL, entities).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var e string
				var b BatchInfo
				if err := rows.Scan(&e, &b.SyncType, &b.Status, &b.Replica, &b.StartedAt, &b.FinishedAt, &b.Fetched, &b.Inserted, &b.Updated,
					&b.Unchanged, &b.Stale, &b.Deleted, &b.Parked, &b.Released, &b.Failed, &b.Published); err != nil {
					return err
				}
				if st := get(e); st != nil {
					st.LastBatch = &b
				}
			}
			return rows.Err()
		})
	batch.Queue(deadLetterCountsSQL).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var e, stage string
				var n int64
				var oldest time.Time
				if err := rows.Scan(&e, &stage, &n, &oldest); err != nil {
					return err
				}
				if st := get(e); st != nil {
					st.DeadLetters[stage] = n
					if st.OldestDeadLetter == nil || oldest.Before(*st.OldestDeadLetter) {
						st.OldestDeadLetter = &oldest
					}
				}
			}
			return rows.Err()
		})
	batch.Queue(parkedCountsSQL).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var e string
				var n int64
				var oldest time.Time
				if err := rows.Scan(&e, &n, &oldest); err != nil {
					return err
				}
				if st := get(e); st != nil {
					st.Parked, st.OldestParked = n, &oldest
				}
			}
			return rows.Err()
		})
	batch.Queue(`SELECT ` + scheduleColumns + ` FROM bridge.background_sync_schedule`).
		Query(func(rows pgx.Rows) error {
			list, err := pgx.CollectRows(rows, scanSchedule)
			if err != nil {
				return err
			}
			for _, sc := range list {
				if st := get(sc.Entity); st != nil {
					st.Schedule = &sc
				}
			}
			return nil
		})
	if err := s.pool.SendBatch(ctx, batch).Close(); err != nil {
		return nil, err
	}
	return out, nil
}

// DeadLettersOutside counts the unresolved dead letters of entities not in the catalog
// (unknown subjects), which Stats does not show.
func (s *Store) DeadLettersOutside(ctx context.Context, entities []string) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL AND NOT entity_name = ANY ($1)`, entities).Scan(&n)
	return n, err
}

// PoolStats are the connection pool's numbers.
type PoolStats struct {
	Acquired, Idle, Total, Max int32
	AcquireCount               int64
	AcquireWait                time.Duration
}

// PoolStats returns the pool's current numbers.
func (s *Store) PoolStats() PoolStats {
	st := s.pool.Stat()
	return PoolStats{Acquired: st.AcquiredConns(), Idle: st.IdleConns(), Total: st.TotalConns(), Max: st.MaxConns(),
		AcquireCount: st.AcquireCount(), AcquireWait: st.AcquireDuration()}
}
