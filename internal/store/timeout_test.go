package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// A batch whose write keeps timing out (here: a target row locked by a session
// that never lets go) fails with ErrTimeout; written with IsolateTimeouts, the row
// to blame becomes a dead letter at stage write and the rest commits.
func TestTimedOutRowsAreIsolated(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Store.LockTimeout = 100 * time.Millisecond
		c.Store.StatementTimeout = 2 * time.Second
	})
	f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:01Z", "one"), siteEvent("upsert", "S2", "2026-01-01T00:00:01Z", "two"),
		siteEvent("upsert", "S3", "2026-01-01T00:00:01Z", "three"))
	hold, err := f.conn.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback(f.ctx)
	if _, err := hold.Exec(f.ctx, `SELECT 1 FROM schedulehub.sites WHERE contract = 'S2' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	e, _ := f.cat.Entity("sites")
	var ds []pipeline.Delivery
	for i, c := range []string{"S1", "S2", "S3"} {
		ds = append(ds, pipeline.Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: uint64(100 + i),
			Data: []byte(siteEvent("upsert", c, "2026-01-01T00:00:02Z", c+" v2"))})
	}
	b := apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, Source: event.Realtime, Replica: "test", Deliveries: ds,
		Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds)}
	if _, err := f.ap.ApplyBatch(f.ctx, b); !errors.Is(err, apply.ErrTimeout) {
		t.Fatalf("a write blocked by a lock: %v, want a timeout", err)
	}
	b.IsolateTimeouts = true
	res, err := f.ap.ApplyBatch(f.ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts.Updated != 2 || res.Counts.Failed != 1 || res.Outcomes[1] != pipeline.Failed {
		t.Fatalf("counts %+v outcomes %v", res.Counts, res.Outcomes)
	}
	if err := hold.Rollback(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.rows(`SELECT contract, description FROM schedulehub.sites ORDER BY 1`); got != "S1|S1 v2\nS2|two\nS3|S3 v2" {
		t.Fatalf("target:\n%s", got)
	}
	if got := f.rows(`SELECT stage_failed, stream_seq, error_message LIKE '%kept timing out%', next_retry_at IS NOT NULL FROM bridge.failed_records`); got != "write|101|true|true" {
		t.Fatalf("dead letter: %s", got)
	}
	// The ledger did not move for the isolated row: its retry applies it.
	if got := f.rows(`SELECT business_key->>0, stream_seq FROM bridge.synced_records ORDER BY 1`); got != "S1|100\nS2|2\nS3|102" {
		t.Fatalf("ledger:\n%s", got)
	}
}
