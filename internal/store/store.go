// Package store is SyncFlow's PostgreSQL adapter: the bridge tables, the ledger and
// the ScheduleHub target tables, through raw SQL on pgx. It is the only package that
// imports pgx; driver errors are translated here (see Retryable) and never reach
// the core.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/syncflow/syncflow/internal/redact"
)

// Store holds the connection pool and what the store learned about the targets.
type Store struct {
	pool        *pgxpool.Pool
	targets     *targets
	checkpoints *checkpoints
	// NewUID generates primary keys (UUIDv7); tests may replace it.
	NewUID func() uuid.UUID
	// Park says how long parked children wait; Retry which dead letters are retried
	// by themselves, and when. Set them before use.
	Park  ParkPolicy
	Retry RetryPolicy
	// Logger receives what happens after a commit and cannot fail it (optional).
	Logger *slog.Logger
}

// Config configures the pool.
type Config struct {
	// URL is the PostgreSQL connection URL (postgres://user:pass@host:port/db).
	URL string
	// MaxConns caps the pool (default 8).
	MaxConns int32
}

// Open connects and pings.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := CheckURL(cfg.URL); err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("database URL %s: %v", RedactURL(cfg.URL), redactErr(err, cfg.URL))
	}
	pc.MaxConns = 8
	if cfg.MaxConns > 0 {
		pc.MaxConns = cfg.MaxConns
	}
	pc.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("database %s: %v", RedactURL(cfg.URL), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database %s is not reachable: %w", RedactURL(cfg.URL), redact.Error(err))
	}
	return &Store{pool: pool, targets: newTargets(), checkpoints: newCheckpoints(), NewUID: newUID}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

func newUID() uuid.UUID { return uuid.Must(uuid.NewV7()) }

// Retryable reports whether err is an infrastructure failure that a later attempt
// of the same, idempotent transaction can get past: a lost or refused connection,
// a server shutting down or restarting, a serialization failure, a deadlock, a lock
// or statement timeout, too many connections, or a closed pool.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		code := pgErr.Code
		switch {
		case code == "40001", code == "40P01", code == "55P03", code == "57014",
			code == "53300", code == "53400",
			strings.HasPrefix(code, "08"), strings.HasPrefix(code, "57P"):
			return true
		}
		return false
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) || pgconn.Timeout(err) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"closed pool", "conn closed", "connection reset", "broken pipe",
		"unexpected EOF", "connection refused", "failed to connect", "receive message failed",
		"write failed", "i/o timeout"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// rowError reports whether err is caused by the data of the rows in the statement
// (classes 22 and 23, or 21000 for a key written twice): splitting the statement
// can isolate the rows to blame.
func rowError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "23") || pgErr.Code == "21000"
}
