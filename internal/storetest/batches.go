package storetest

import (
	"context"
	"fmt"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// The batch rows (bridge.sync_batches): one per unit of sync work, with its
// counters.

type batchRow struct {
	Row    apply.BatchRow
	Counts pipeline.Counts
	Status string
}

// CountBatch adds counts to a batch row, creating it (with the store's defaults)
// when missing, and closes it as completed when close is set. Neither the counts
// added nor the sums may be negative (the table's check constraint, which
// PostgreSQL applies to the row proposed for insertion too).
func (t *tx) CountBatch(ctx context.Context, b apply.BatchRow, c pipeline.Counts, close bool) error {
	if err := t.stmt(ctx); err != nil {
		return err
	}
	if b.SyncType == "" {
		b.SyncType = "realtime"
	}
	if b.SourceSystem == "" {
		b.SourceSystem = "oracle_ifs"
	}
	if b.Entity == "" {
		b.Entity = apply.UnknownEntity
	}
	row, ok := t.st.batches[b.UID]
	if !ok {
		row = batchRow{Row: b, Status: "running"}
	}
	row.Counts.Merge(c)
	if close {
		row.Status = "completed"
	}
	if b.SyncType != "realtime" && b.SyncType != "background" || negative(c) || negative(row.Counts) {
		// The store sends the counting with a later statement: its failure is
		// the transaction's, never taken for the rows' (no kind).
		return t.fail(fmt.Errorf("counting the batch: row of sync_batches violates a check constraint (sync_type %q, counts %+v)", b.SyncType, row.Counts))
	}
	t.st.batches[b.UID] = row
	return nil
}

func negative(c pipeline.Counts) bool {
	for _, n := range []int64{c.Fetched, c.Normalized, c.Mapped, c.Inserted, c.Updated, c.Unchanged, c.Stale, c.Deleted, c.Parked,
		c.Released, c.Failed} {
		if n < 0 {
			return true
		}
	}
	return false
}
