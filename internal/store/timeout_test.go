package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// A batch whose write keeps timing out (here: a target trigger that takes longer
// than the statement timeout for one row) fails with ErrTimeout; written with
// IsolateTimeouts, the row to blame becomes a dead letter at stage write and the
// rest commits. A row locked by another session is not a timeout of the batch's
// but a conflict: it is held, never blamed on the row.
func TestTimedOutRowsAreIsolated(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Store.LockTimeout = 100 * time.Millisecond
		c.Store.StatementTimeout = 300 * time.Millisecond
	})
	f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:01Z", "one"), siteEvent("upsert", "S2", "2026-01-01T00:00:01Z", "two"),
		siteEvent("upsert", "S3", "2026-01-01T00:00:01Z", "three"))
	hold, err := f.conn.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hold.Exec(f.ctx, `SELECT 1 FROM schedulehub.sites WHERE contract = 'S2' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	lockedRow := func() error {
		e, _ := f.cat.Entity("sites")
		ds := []pipeline.Delivery{{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: 90, Data: []byte(siteEvent("upsert", "S2", "2026-01-01T00:00:02Z", "x"))}}
		_, err := f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, Source: event.Realtime, Replica: "test",
			Deliveries: ds, Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds), IsolateTimeouts: true})
		return err
	}
	if err := lockedRow(); !errors.Is(err, apply.ErrConflict) {
		t.Fatalf("a write blocked by a row lock: %v, want a conflict (held, even with its rows isolated)", err)
	}
	if err := hold.Rollback(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records`); got != "0" {
		t.Fatalf("%s dead letters for a locked row", got)
	}
	if _, err := f.conn.Exec(f.ctx, `
		CREATE FUNCTION schedulehub.test_slow_s2() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.contract = 'S2' THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$;
		CREATE TRIGGER test_slow_s2 BEFORE UPDATE ON schedulehub.sites FOR EACH ROW EXECUTE FUNCTION schedulehub.test_slow_s2()`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = f.conn.Exec(f.ctx, `DROP TRIGGER IF EXISTS test_slow_s2 ON schedulehub.sites; DROP FUNCTION IF EXISTS schedulehub.test_slow_s2()`)
	})
	e, _ := f.cat.Entity("sites")
	var ds []pipeline.Delivery
	for i, c := range []string{"S1", "S2", "S3"} {
		ds = append(ds, pipeline.Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: uint64(100 + i),
			Data: []byte(siteEvent("upsert", c, "2026-01-01T00:00:02Z", c+" v2"))})
	}
	b := apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, Source: event.Realtime, Replica: "test", Deliveries: ds,
		Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds)}
	if _, err := f.ap.ApplyBatch(f.ctx, b); !errors.Is(err, apply.ErrTimeout) {
		t.Fatalf("a write slower than the statement timeout: %v, want a timeout", err)
	}
	b.IsolateTimeouts = true
	res, err := f.ap.ApplyBatch(f.ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts.Updated != 2 || res.Counts.Failed != 1 || res.Outcomes[1] != pipeline.Failed {
		t.Fatalf("counts %+v outcomes %v", res.Counts, res.Outcomes)
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

// A target column dropped under the running service fails the next write with
// 42703; the store reads the table's columns again, and the retry writes what
// the table has now.
func TestTargetReadAgainAfterAColumnIsDropped(t *testing.T) {
	f := newFixture(t)
	if _, err := f.conn.Exec(f.ctx, `ALTER TABLE schedulehub.sites ADD COLUMN doomed text`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = f.conn.Exec(f.ctx, `ALTER TABLE schedulehub.sites DROP COLUMN IF EXISTS doomed`) })
	if err := f.st.PrepareTargets(f.ctx, f.cat); err != nil {
		t.Fatal(err)
	}
	body := `{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:01Z","data":{"CONTRACT":"S1","DOOMED":"x"}}`
	f.apply("sites", nil, body)
	if _, err := f.conn.Exec(f.ctx, `ALTER TABLE schedulehub.sites DROP COLUMN doomed`); err != nil {
		t.Fatal(err)
	}
	e, _ := f.cat.Entity("sites")
	ds := []pipeline.Delivery{{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: 500,
		Data: []byte(`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:02Z","data":{"CONTRACT":"S1","DOOMED":"y","DESCRIPTION":"after"}}`)}}
	b := apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, Source: event.Realtime, Replica: "test", Deliveries: ds,
		Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds)}
	if _, err := f.ap.ApplyBatch(f.ctx, b); err == nil || apply.Kind(err) == apply.ErrRowRejected.Error() {
		t.Fatalf("the write with the dropped column: %v, want a failure of the database's (held, not dead-lettered)", err)
	}
	if res, err := f.ap.ApplyBatch(f.ctx, b); err != nil || res.Counts.Updated != 1 {
		t.Fatalf("the retry: %+v %v", res.Counts, err)
	}
	if got := f.rows(`SELECT description FROM schedulehub.sites`); got != "after" {
		t.Fatalf("target %q", got)
	}
}
