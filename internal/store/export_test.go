package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// WithTracer returns cfg with a tracer of every statement and pipeline.
func WithTracer(cfg Config, tr pgx.QueryTracer) Config {
	cfg.tracer = tr
	return cfg
}

// The statements whose plans TestPlansAtScale pins.
const (
	LastBatchesSQL             = lastBatchesSQL
	DeadLetterCountsSQL        = deadLetterCountsSQL
	ParkedCountsSQL            = parkedCountsSQL
	SweepDueSQL                = sweepDueSQL
	DueDeadLettersSQL          = dueDeadLettersSQL
	ReadLedgerSQL              = readLedgerSQL
	PresentParentsSQL          = presentParentsSQL
	ReleaseOrphansSQL          = releaseOrphansSQL
	ReleasableOrphanParentsSQL = releasableOrphanParentsSQL
	ReleasableOrphansSQL       = releasableOrphansSQL
	ReleaseChildrenSQL         = releaseChildrenSQL
	ReleasableChildrenSQL      = releasableChildrenSQL
	ParkedChildrenSQL          = parkedChildrenSQL
	AbandonBatchesSQL          = abandonBatchesSQL
)

// OrphansOfSQL is the statement that lists the parents orphans of entities
// wait for, at most OrphansListed + 1 of them.
var OrphansOfSQL = orphansOfSQL

// OrphansListed is how many orphans OrphansOfSQL lists at most.
const OrphansListed = orphansListed

// AskSettings are the settings of the re-check's questions.
var AskSettings = askSettings

// LookupSettings are the settings of the key lookups of queryEach (the ledger
// read and the parents check), of the ledger write and of parking.
var LookupSettings = genericSettings

// KeptReasonSQL holds the checks that decide whether prune may drop a month.
var KeptReasonSQL = keptReasonSQL

// PlanCounts sums, over the store's idle connections, how many times the
// statements prepared there whose text contains part ran with a generic and
// with a custom plan.
func PlanCounts(ctx context.Context, s *Store, part string) (generic, custom int64, err error) {
	conns := s.pool.AcquireAllIdle(ctx)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for _, c := range conns {
		var g, cu int64
		if err := c.QueryRow(ctx, `SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)
			FROM pg_prepared_statements WHERE strpos(statement, $1) > 0`, part).Scan(&g, &cu); err != nil {
			return 0, 0, err
		}
		generic, custom = generic+g, custom+cu
	}
	return generic, custom, nil
}

// TargetStatements returns the statements of entity's target that look rows
// up by key: the ledger write (with each target row's hash), the lock of the
// rows of deletes, the deletes, and the ledger update of repair rewrites.
func TargetStatements(s *Store, entity string) (ledger, lock, deleteWon, rewrite string, err error) {
	t, err := s.target(entity)
	if err != nil {
		return "", "", "", "", err
	}
	return t.writeLedgerSQL(), t.lockSQL(), t.deleteWonSQL(), t.rewriteHashSQL(), nil
}

// Setting returns the value of a setting in a session of the store's pool.
func Setting(ctx context.Context, s *Store, name string) (string, error) {
	var v string
	err := s.pool.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&v)
	return v, err
}

// NewConns counts the connections the store's pool has opened.
func NewConns(s *Store) int64 { return s.pool.Stat().NewConnsCount() }
