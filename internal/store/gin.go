package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The optional GIN index on the dead letters' payloads (raw_data, with
// jsonb_path_ops: it serves containment, @>, and is a third the size of the
// default operator class). `dlq list --match` works without it, by scanning.

// GINIndex is the index's name on bridge.failed_records.
const GINIndex = "ix_failed_records_raw_data_gin"

// ginLock is the advisory lock one `db gin` holds while it works.
const ginLock = "bridge.failed_records gin"

// ErrGINBusy says another process is enabling or disabling the index.
var ErrGINBusy = errors.New("another `syncflow db gin` is enabling or disabling the index right now")

// GINState says whether the index exists and whether every partition's part
// of it is built (a build that stopped half-way leaves it invalid).
func (s *Store) GINState(ctx context.Context) (exists, valid bool, err error) {
	err = s.pool.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_and(i.indisvalid), false)
		FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		WHERE c.relname = $1 AND c.relnamespace = 'bridge'::regnamespace`, GINIndex).Scan(&exists, &valid)
	return exists, valid, err
}

// EnableGIN builds the index without blocking writers: the partitioned index
// is declared on the table alone, then each month's part is built CONCURRENTLY
// and attached; once every part is attached the index is valid, and months made
// later get their part as they are made. A part left invalid by an earlier
// build that stopped is dropped and built again; a part already built is kept,
// so enabling again after an interruption finishes the job. progress hears each
// partition as its part is built. It must run as the tables' owner (the role
// that runs the migrations).
func (s *Store) EnableGIN(ctx context.Context, progress func(partition string)) error {
	return s.withGINLock(ctx, func(conn *pgx.Conn) error {
		// Declaring the index takes the table's lock for a moment: wait for it
		// at most two seconds at a time (writers queue behind a waiting lock).
		if err := retryBusy(ctx, 5, func() error {
			return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = 2000"); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `CREATE INDEX IF NOT EXISTS `+GINIndex+` ON ONLY bridge.failed_records USING gin (raw_data jsonb_path_ops)`)
				return err
			})
		}); err != nil {
			return err
		}
		rows, err := conn.Query(ctx, `SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'bridge.failed_records'::regclass ORDER BY 1`)
		if err != nil {
			return err
		}
		parts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, part := range parts {
			if err := buildGINPart(ctx, conn, part, progress); err != nil {
				return fmt.Errorf("building the index of %s: %w", part, err)
			}
		}
		return nil
	})
}

// buildGINPart builds and attaches one partition's part of the index, unless
// it has one attached already (a month made after the index was declared gets
// its part as it is made).
func buildGINPart(ctx context.Context, conn *pgx.Conn, part string, progress func(string)) error {
	var attached bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_inherits h JOIN pg_index i ON i.indexrelid = h.inhrelid
		WHERE h.inhparent = ('bridge.' || $1)::regclass AND i.indrelid = ('bridge.' || $2)::regclass)`, GINIndex, part).Scan(&attached); err != nil {
		return err
	}
	if attached {
		return nil
	}
	name := part + "_raw_data_gin"
	ident := "bridge." + pgx.Identifier{name}.Sanitize()
	var valid *bool
	if err := conn.QueryRow(ctx, `SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
		WHERE c.relname = $1 AND c.relnamespace = 'bridge'::regnamespace`, name).Scan(&valid); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if valid != nil && !*valid {
		// Left invalid by a build that stopped half-way: build it again.
		if _, err := conn.Exec(ctx, `DROP INDEX CONCURRENTLY IF EXISTS `+ident); err != nil {
			return err
		}
		valid = nil
	}
	if valid == nil {
		if progress != nil {
			progress(part)
		}
		if _, err := conn.Exec(ctx, `CREATE INDEX CONCURRENTLY `+pgx.Identifier{name}.Sanitize()+` ON bridge.`+pgx.Identifier{part}.Sanitize()+
			` USING gin (raw_data jsonb_path_ops)`); err != nil {
			return err
		}
	}
	_, err := conn.Exec(ctx, `ALTER INDEX bridge.`+GINIndex+` ATTACH PARTITION `+ident)
	return err
}

// DisableGIN drops the index, and says whether there was one. PostgreSQL cannot
// drop a partitioned index CONCURRENTLY: the drop takes the table's lock for a
// moment (no rows are read), waiting at most lockWait for it and trying again
// up to five times, so writers never queue behind it for longer.
func (s *Store) DisableGIN(ctx context.Context, lockWait time.Duration) (bool, error) {
	var existed bool
	err := s.withGINLock(ctx, func(conn *pgx.Conn) error {
		exists, _, err := s.GINState(ctx)
		if err != nil || !exists {
			return err
		}
		existed = true
		return retryBusy(ctx, 5, func() error {
			return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", lockWait.Milliseconds())); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `DROP INDEX bridge.`+GINIndex)
				return err
			})
		})
	})
	return existed, err
}

// retryBusy runs f until it does not fail for a lock that timed out (55P03),
// at most tries times, a second apart.
func retryBusy(ctx context.Context, tries int, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		var pgErr *pgconn.PgError
		if err == nil || attempt == tries || !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// withGINLock runs f on a connection of its own that holds the advisory lock
// of `db gin`, or returns ErrGINBusy at once.
func (s *Store) withGINLock(ctx context.Context, f func(*pgx.Conn) error) error {
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	var got bool
	if err := c.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, ginLock).Scan(&got); err != nil {
		return err
	}
	if !got {
		return ErrGINBusy
	}
	defer func() {
		// A connection whose unlock failed must not go back to the pool holding it.
		if _, err := c.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext($1))`, ginLock); err != nil {
			c.Conn().Close(context.Background())
		}
	}()
	return f(c.Conn())
}

// IsPermissionDenied says whether err is PostgreSQL refusing the role a right.
func IsPermissionDenied(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501" // insufficient_privilege (also "must be owner")
}
