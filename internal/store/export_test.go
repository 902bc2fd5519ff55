package store

import "github.com/jackc/pgx/v5"

// WithTracer returns cfg with a tracer of every statement and pipeline.
func WithTracer(cfg Config, tr pgx.QueryTracer) Config {
	cfg.tracer = tr
	return cfg
}

// The statements whose plans TestPlansAtScale pins.
const (
	LastBatchesSQL       = lastBatchesSQL
	DeadLetterCountsSQL  = deadLetterCountsSQL
	ParkedCountsSQL      = parkedCountsSQL
	SweepDueSQL          = sweepDueSQL
	DueDeadLettersSQL    = dueDeadLettersSQL
	ReadLedgerSQL        = readLedgerSQL
	PresentParentsSQL    = presentParentsSQL
	ReleaseSQL           = releaseSQL
	AnyReleasableSQL     = anyReleasableSQL
	ReleasableOrphansSQL = releasableOrphansSQL
	ReleaseChildrenSQL   = releaseChildrenSQL
	AnyOrphansSQL        = anyOrphansSQL
	AbandonBatchesSQL    = abandonBatchesSQL
)

// KeptReasonSQL holds the checks that decide whether prune may drop a month.
var KeptReasonSQL = keptReasonSQL
