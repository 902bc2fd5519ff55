package store

import (
	"context"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
)

// tx is one transaction. Its methods are the statements of the tables, one each,
// in the file of the table they mainly touch; every error they return is
// classified. It is an apply.Tx and a deadletter.Tx.
type tx struct {
	s  *Store
	tx pgx.Tx
	// unmapped holds the fields no column took, counted once per record, for
	// the drift counts once the transaction commits.
	unmapped *unmappedNotes
}

var (
	_ apply.Tx      = (*tx)(nil)
	_ deadletter.Tx = (*tx)(nil)
)

// InTx runs fn in one transaction and commits when fn returns nil (apply.Store).
func (s *Store) InTx(ctx context.Context, fn func(apply.Tx) error) error {
	return s.inTx(ctx, func(t *tx) error { return fn(t) })
}

func (s *Store) inTx(ctx context.Context, fn func(*tx) error) error {
	var committed *tx
	err := pgx.BeginFunc(ctx, s.pool, func(t pgx.Tx) error {
		committed = &tx{s: s, tx: t}
		return fn(committed)
	})
	if err == nil && committed.unmapped != nil {
		s.drift.merge(committed.unmapped)
	}
	return classify(err)
}

// DeadLetters is the store as the sweeper and the retry worker use it
// (deadletter.Store).
type DeadLetters struct{ *Store }

// InTx runs fn in one transaction and commits when fn returns nil.
func (d DeadLetters) InTx(ctx context.Context, fn func(deadletter.Tx) error) error {
	return d.inTx(ctx, func(t *tx) error { return fn(t) })
}

// Savepoint runs fn under a savepoint, rolled back when fn fails.
func (t *tx) Savepoint(ctx context.Context, fn func() error) error {
	sp, err := t.tx.Begin(ctx)
	if err != nil {
		return classify(err)
	}
	if err := fn(); err != nil {
		if rbErr := sp.Rollback(ctx); rbErr != nil {
			return classify(rbErr)
		}
		return classify(err)
	}
	return classify(sp.Commit(ctx))
}

// SetStatementTimeout sets statement_timeout for the rest of the transaction.
func (t *tx) SetStatementTimeout(ctx context.Context, d time.Duration) error {
	_, err := t.tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, strconv.FormatInt(max(d.Milliseconds(), 1), 10))
	return classify(err)
}
