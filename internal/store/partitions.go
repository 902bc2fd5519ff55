package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// sync_batches and failed_records are partitioned by month of their uid (a
// UUIDv7 begins with its creation time; see migration 0005). Partitions are made
// ahead of time, and retention drops whole months.

// MonthsAhead is how many monthly partitions exist from the current month on:
// this one and the next two, so a write never needs one that is missing even
// when no process has run for weeks.
const MonthsAhead = 3

// PartitionCheck is how often a running service makes sure they exist.
const PartitionCheck = time.Hour

// partitioned are the tables partitioned by month, in the order prune drops
// their months: dead letters before the batches they reference.
var partitioned = []string{"failed_records", "sync_batches"}

// EnsurePartitions creates the monthly partitions missing from the month of now
// to MonthsAhead-1 months later, and returns how many it created. Several
// processes may call it at once (they take turns).
func (s *Store) EnsurePartitions(ctx context.Context, now time.Time) (int, error) {
	total := 0
	for _, table := range partitioned {
		var n int
		if err := s.pool.QueryRow(ctx, `SELECT bridge.ensure_month_partitions($1, $2, $3)`, table, now, MonthsAhead).Scan(&n); err != nil {
			return total, fmt.Errorf("creating the monthly partitions of bridge.%s: %w", table, err)
		}
		total += n
	}
	return total, nil
}

// KeepPartitions runs EnsurePartitions every interval until ctx ends. A
// failure is logged and tried again: the DEFAULT partition takes the rows of a
// month not yet created, and the months ahead leave weeks to succeed.
func (s *Store) KeepPartitions(ctx context.Context, interval time.Duration, log *slog.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if n, err := s.EnsurePartitions(ctx, time.Now()); err != nil && ctx.Err() == nil {
				log.Warn("creating next months' partitions failed; trying again within the hour", "err", err)
			} else if n > 0 {
				log.Info("created monthly partitions", "partitions", n)
			}
		}
	}
}

// Month is one monthly partition and what prune found in it.
type Month struct {
	Table, Partition string
	// Start is the first instant of the month (UTC).
	Start time.Time
	Rows  int64
	// Kept says why a month past retention stays ("" when it was dropped, or
	// would be in a dry run).
	Kept string
}

// monthsSQL lists the month partitions of a table with their first instant,
// oldest first. (A partition another prune drops meanwhile has no bound any
// more: it is left out.)
const monthsSQL = `
SELECT name, start FROM (
    SELECT c.relname AS name,
           bridge.uuid_time(substring(pg_get_expr(c.relpartbound, c.oid) FROM '''([0-9a-f-]{36})'''::text)::uuid) AS start
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = ('bridge.' || $1)::regclass AND c.relname <> $1 || '_default') m
WHERE start IS NOT NULL
ORDER BY start`

// keptReasonSQL says, for the month [$1, $2) of a table, why its partition must
// stay, or returns no row. Every check reads an index (TestPlansAtScale pins
// them), the references through the referencing tables' batch indexes.
var keptReasonSQL = map[string]string{
	"failed_records": `
SELECT 'it holds unresolved dead letters' WHERE EXISTS (
    SELECT 1 FROM bridge.failed_records WHERE uid >= $1 AND uid < $2 AND resolved_at IS NULL)
UNION ALL
SELECT 'it holds dead letters resolved since the cutoff' WHERE EXISTS (
    SELECT 1 FROM bridge.failed_records WHERE uid >= $1 AND uid < $2 AND resolved_at >= $3)
LIMIT 1`,
	"sync_batches": `
SELECT 'it holds batches still running' WHERE EXISTS (
    SELECT 1 FROM bridge.sync_batches WHERE uid >= $1 AND uid < $2 AND status = 'running')
UNION ALL
SELECT 'it holds batches finished since the cutoff' WHERE EXISTS (
    SELECT 1 FROM bridge.sync_batches WHERE uid >= $1 AND uid < $2 AND finished_at >= $3)
UNION ALL
SELECT 'dead letters reference its batches' WHERE EXISTS (
    SELECT 1 FROM bridge.failed_records WHERE batch_uid >= $1 AND batch_uid < $2)
UNION ALL
SELECT 'parked children reference its batches' WHERE EXISTS (
    SELECT 1 FROM bridge.pending_children WHERE batch_uid >= $1 AND batch_uid < $2)
UNION ALL
SELECT 'a checkpoint references one of its batches' WHERE EXISTS (
    SELECT 1 FROM bridge.erp_sync_state WHERE last_batch_uid >= $1 AND last_batch_uid < $2)
LIMIT 1`,
}

// DropMonths drops, as whole partitions, the months of failed_records and then
// sync_batches that ended by cutoff and hold nothing still needed: no
// unresolved dead letter or one resolved since cutoff; no batch running,
// finished since cutoff, or referenced by a dead letter, a parked child or a
// checkpoint. A month that holds such a row stays whole (the drop waits; prune's
// row-by-row pass removes what it can of it) and is returned with the reason.
// Each month's rows are archived (and synced) first, without a lock; then a
// short transaction locks the month, checks again, detaches and drops it,
// waiting at most lockWait for its locks (a month that cannot get them is kept,
// for the next prune: its rows may then be in the archive twice, once per try;
// their uids tell the copies apart). A kept month is not counted (Rows 0). With
// dryRun nothing changes and nothing is locked. Prunes take turns dropping
// months (an advisory lock), so two at once archive each month once.
func (s *Store) DropMonths(ctx context.Context, cutoff time.Time, dryRun bool, archive Archive, lockWait time.Duration) ([]Month, error) {
	var out []Month
	if !dryRun {
		// One prune drops months at a time (a second waits, then finds them
		// gone), so that two at once archive each month once.
		c, err := s.pool.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		defer c.Release()
		if _, err := c.Exec(ctx, `SELECT pg_advisory_lock(hashtext('bridge.drop_months'))`); err != nil {
			return nil, err
		}
		defer func() {
			if _, err := c.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('bridge.drop_months'))`); err != nil {
				c.Conn().Close(context.Background())
			}
		}()
	}
	for _, table := range partitioned {
		rows, err := s.pool.Query(ctx, monthsSQL, table)
		if err != nil {
			return out, err
		}
		type part struct {
			name  string
			start time.Time
		}
		parts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (part, error) {
			var p part
			err := r.Scan(&p.name, &p.start)
			return p, err
		})
		if err != nil {
			return out, err
		}
		for _, p := range parts {
			start := p.start.UTC()
			end := start.AddDate(0, 1, 0)
			if end.After(cutoff) {
				break
			}
			m := Month{Table: table, Partition: p.name, Start: start}
			lo, hi := uuidFloor(start), uuidFloor(end)
			// The month is read through its table (its uid range), so that the
			// commands need no rights on the partitions themselves.
			month := "FROM bridge." + table + " p WHERE p.uid >= '" + lo + "' AND p.uid < '" + hi + "'"
			// Whether the month may go, and its archive, are read without a lock:
			// a month past retention with nothing unresolved gets no writers
			// (its uids are old, and only unresolved dead letters are updated).
			// Only the drop takes locks, briefly, and checks again under them.
			if err := s.pool.QueryRow(ctx, keptReasonSQL[table], lo, hi, cutoff).Scan(&m.Kept); err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return out, err
			}
			if m.Kept != "" || dryRun {
				if m.Kept == "" {
					if err := s.pool.QueryRow(ctx, "SELECT count(*) "+month).Scan(&m.Rows); err != nil {
						return out, err
					}
				}
				out = append(out, m)
				continue
			}
			err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
				n, err := archiveRows(ctx, tx, archive, table, "SELECT row_to_json(p)::text "+month)
				m.Rows = n
				return err
			})
			if err != nil {
				return out, fmt.Errorf("archiving partition %s: %w", p.name, err)
			}
			err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", lockWait.Milliseconds())); err != nil {
					return err
				}
				// Writers of the month, and another prune, wait from here until
				// it is gone.
				if _, err := tx.Exec(ctx, "SELECT bridge.take_month_partition($1, $2)", table, p.name); err != nil {
					return err
				}
				if err := tx.QueryRow(ctx, keptReasonSQL[table], lo, hi, cutoff).Scan(&m.Kept); err != nil && !errors.Is(err, pgx.ErrNoRows) {
					return err
				}
				if m.Kept != "" {
					return nil
				}
				_, err := tx.Exec(ctx, "SELECT bridge.drop_month_partition($1, $2)", table, p.name)
				return err
			})
			if err != nil {
				var pgErr *pgconn.PgError
				switch {
				case errors.As(err, &pgErr) && pgErr.Code == "42P01": // undefined_table
					continue // another prune dropped it meanwhile (and archived it too)
				case errors.As(err, &pgErr) && (pgErr.Code == "55P03" || pgErr.Code == "40P01"): // lock_not_available, deadlock_detected
					m.Kept = "its locks were busy (try again later)"
				case errors.As(err, &pgErr) && pgErr.Code == "23503": // foreign_key_violation
					// A reference to one of its batches arrived after the checks:
					// PostgreSQL refused the detach. (Its rows, archived already,
					// will be archived again when the month goes.)
					m.Kept = "a reference to its rows arrived meanwhile (try again later)"
				default:
					return out, fmt.Errorf("dropping partition %s: %w", p.name, err)
				}
			}
			out = append(out, m)
		}
	}
	return out, nil
}

// archiveRows hands every row query returns (one JSON text each) to archive,
// then syncs it. Without an archive it only counts.
func archiveRows(ctx context.Context, tx pgx.Tx, archive Archive, table, query string) (int64, error) {
	if archive == nil {
		var n int64
		err := tx.QueryRow(ctx, "SELECT count(*) FROM ("+query+") q").Scan(&n)
		return n, err
	}
	rows, err := tx.Query(ctx, query)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var n int64
	for rows.Next() {
		var row []byte
		if err := rows.Scan(&row); err != nil {
			return n, err
		}
		if err := archive.Add(table, row); err != nil {
			return n, err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return n, err
	}
	return n, archive.Sync()
}

// uuidFloor is the smallest UUIDv7 of the millisecond t (bridge.uuid_floor).
func uuidFloor(t time.Time) string {
	ms := uint64(t.UnixMilli())
	return fmt.Sprintf("%08x-%04x-0000-0000-000000000000", ms>>16, ms&0xffff)
}

// StrandedRows counts, per table, the rows in its DEFAULT partition: rows of a
// month whose partition did not exist when they were written, or whose uid is
// not a UUIDv7. Prune removes them row by row, never as a month.
func (s *Store) StrandedRows(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	for _, table := range partitioned {
		var n int64
		if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM bridge."+table+"_default").Scan(&n); err != nil {
			return nil, err
		}
		if n > 0 {
			out[table] = n
		}
	}
	return out, nil
}
