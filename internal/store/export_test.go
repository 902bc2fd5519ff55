package store

// The statements whose plans TestPlansAtScale pins.
const (
	LastBatchesSQL      = lastBatchesSQL
	DeadLetterCountsSQL = deadLetterCountsSQL
	ParkedCountsSQL     = parkedCountsSQL
	SweepDueSQL         = sweepDueSQL
	DueDeadLettersSQL   = dueDeadLettersSQL
	LockLedgerSQL       = lockLedgerSQL
	PresentParentsSQL   = presentParentsSQL
	ReleaseSQL          = releaseSQL
	AnyReleasableSQL    = anyReleasableSQL
	AbandonBatchesSQL   = abandonBatchesSQL
)

// KeptReasonSQL holds the checks that decide whether prune may drop a month.
var KeptReasonSQL = keptReasonSQL
