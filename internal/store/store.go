// Package store is SyncFlow's PostgreSQL adapter: the bridge tables, the ledger and
// the ScheduleHub target tables, through raw SQL on pgx. It is the only package that
// imports pgx; driver errors are classified here, once (errors.go), and never reach
// the core.
//
// It decides nothing: the core (apply, deadletter, backfill) decides and the store
// carries out, one file per table with its named statements. It imports only the
// core, never internal/stream.
package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store holds the connection pool and what the store learned about the targets.
type Store struct {
	pool        *pgxpool.Pool
	targets     *targets
	checkpoints *checkpoints
	drift       *drift
	// NewUID generates primary keys (UUIDv7); tests may replace it.
	NewUID func() uuid.UUID
}

// Config configures the store.
type Config struct {
	// URL is the PostgreSQL connection URL (postgres://user:pass@host:port/db).
	URL string
	// MaxConns caps the pool (default 8).
	MaxConns int32
	// StatementTimeout, LockTimeout and IdleInTransactionTimeout are set on every
	// connection (statement_timeout, lock_timeout and
	// idle_in_transaction_session_timeout), so that no statement, lock wait or
	// forgotten transaction holds SyncFlow's work for ever. Zero leaves the server's
	// setting; `syncflow run` sets 30s, 10s and 60s by default.
	StatementTimeout, LockTimeout, IdleInTransactionTimeout time.Duration

	// tracer sees every statement and pipeline (the tests count round trips).
	tracer pgx.QueryTracer
}

func (c Config) withDefaults() Config {
	c.MaxConns = cmp.Or(c.MaxConns, 8)
	return c
}

// Validate says what is wrong with the settings, before any connection is tried.
func (c Config) Validate() error {
	var errs []error
	if err := CheckURL(c.URL); err != nil {
		errs = append(errs, err)
	}
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("the pool size %d is negative", c.MaxConns))
	}
	if c.StatementTimeout < 0 || c.LockTimeout < 0 || c.IdleInTransactionTimeout < 0 {
		errs = append(errs, errors.New("the statement, lock and idle-in-transaction timeouts must not be negative"))
	}
	return errors.Join(errs...)
}

// Open connects and pings.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("database URL %s: %v", RedactURL(cfg.URL), redactErr(err, cfg.URL))
	}
	pc.MaxConns = cfg.MaxConns
	pc.ConnConfig.ConnectTimeout = 5 * time.Second
	pc.ConnConfig.Tracer = cfg.tracer
	// A timestamp without an offset (a pass-through field of an event) means UTC
	// whatever the server's TimeZone, as the rest of SyncFlow reads them.
	pc.ConnConfig.RuntimeParams["timezone"] = "UTC"
	// The text of a row, which the verification hash is taken of
	// (targets.go, hashExpr), does not follow a database's defaults.
	pc.ConnConfig.RuntimeParams["datestyle"] = "ISO, MDY"
	pc.ConnConfig.RuntimeParams["intervalstyle"] = "postgres"
	pc.ConnConfig.RuntimeParams["extra_float_digits"] = "1"
	pc.ConnConfig.RuntimeParams["bytea_output"] = "hex"
	pc.ConnConfig.RuntimeParams["lc_monetary"] = "C"
	// Statements planned afresh for a batch of a thousand keys are estimated
	// above jit_above_cost, and compiling them took 15-58 ms of a release
	// that runs in 2-3 ms: SyncFlow's statements are short, and never gain
	// from JIT.
	pc.ConnConfig.RuntimeParams["jit"] = "off"
	for name, d := range map[string]time.Duration{"statement_timeout": cfg.StatementTimeout, "lock_timeout": cfg.LockTimeout,
		"idle_in_transaction_session_timeout": cfg.IdleInTransactionTimeout} {
		if d > 0 {
			pc.ConnConfig.RuntimeParams[name] = strconv.FormatInt(max(d.Milliseconds(), 1), 10)
		}
	}
	pc.AfterConnect = func(_ context.Context, conn *pgx.Conn) error {
		m := conn.TypeMap()
		m.TryWrapEncodePlanFuncs = append([]pgtype.TryWrapEncodePlanFunc{sizedArrays}, m.TryWrapEncodePlanFuncs...)
		return nil
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("database %s: %v", RedactURL(cfg.URL), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, notConnected(cfg.URL, classify(err))
	}
	return &Store{pool: pool, targets: newTargets(), checkpoints: newCheckpoints(), drift: newDrift(), NewUID: newUID}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

func newUID() uuid.UUID { return uuid.Must(uuid.NewV7()) }
