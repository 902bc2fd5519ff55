package store

// The statements whose plans TestPlansAtScale pins.
const (
	LastBatchesSQL      = lastBatchesSQL
	DeadLetterCountsSQL = deadLetterCountsSQL
	ParkedCountsSQL     = parkedCountsSQL
	SweepDueSQL         = sweepDueSQL
	DueDeadLettersSQL   = dueDeadLettersSQL
	LockLedgerSQL       = lockLedgerSQL
	ReleaseSQL          = releaseSQL
	AnyReleasableSQL    = anyReleasableSQL
	AbandonBatchesSQL   = abandonBatchesSQL
)
