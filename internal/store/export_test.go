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
	ReleaseOrphansSQL    = releaseOrphansSQL
	AnyReleasableSQL     = anyReleasableSQL
	ReleasableOrphansSQL = releasableOrphansSQL
	ReleaseChildrenSQL   = releaseChildrenSQL
	AbandonBatchesSQL    = abandonBatchesSQL
)

// OrphansOfSQL is the statement that tells whether orphans of entities wait.
var OrphansOfSQL = orphansOfSQL

// KeptReasonSQL holds the checks that decide whether prune may drop a month.
var KeptReasonSQL = keptReasonSQL
