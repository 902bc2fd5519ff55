package store_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/mapping"
)

func TestSweeperOrphansAChildWhoseParentNeverComes(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.DeadLetters.Park = deadletter.Backoff{FirstRetry: 10 * time.Millisecond, MaxDelay: 20 * time.Millisecond, MaxRetries: 3}
	})
	f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:00Z", "site"))
	f.apply("work_orders", nil, woEvent("WO1", "2026-01-01T00:00:01Z", "waiting for P1"))
	if got := f.rows(`SELECT parent_entity, parent_key::text, retry_count FROM bridge.pending_children`); got != `items|["P1"]|0` {
		t.Fatalf("parked: %s", got)
	}
	var orphaned int
	for i := 0; i < 50 && orphaned == 0; i++ {
		time.Sleep(25 * time.Millisecond)
		res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{})
		if err != nil {
			t.Fatal(err)
		}
		orphaned += res.Orphaned
	}
	if orphaned != 1 {
		t.Fatalf("orphaned %d", orphaned)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.pending_children`); got != "0" {
		t.Fatalf("%s still parked", got)
	}
	got := f.rows(`SELECT entity_name, stage_failed, next_retry_at IS NULL, raw_data->'data'->>'ORDER_NO' FROM bridge.failed_records`)
	if got != "work_orders|orphan|true|WO1" {
		t.Fatalf("dead letter: %s", got)
	}
	if msg := f.rows(`SELECT error_message FROM bridge.failed_records`); !strings.Contains(msg, `parent items ["P1"] was never applied`) || !strings.Contains(msg, "re-checked 2 times") {
		t.Fatalf("error message: %s", msg)
	}
	// Sweeps are counted: one child examined per sweep, its outcome parked (still
	// waiting) or failed (orphaned).
	if got := f.rows(`SELECT sum(rows_fetched)::int, sum(rows_parked)::int, sum(rows_failed)::int FROM bridge.sync_batches WHERE entity_name = 'work_orders' AND status = 'completed'`); got != "3|2|1" {
		t.Fatalf("sweep batches fetched|parked|failed: %s", got)
	}
}

func TestSweeperReleasesWhenTheParentArrivedUnnoticed(t *testing.T) {
	f := newFixture(t)
	f.apply("work_orders", nil, woEvent("WO1", "2026-01-01T00:00:01Z", "released by the sweeper"))
	// The parents arrive by a path that does not release (as if by another
	// replica in a race the locks would prevent, or by hand).
	if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq)
		SELECT 'sites', encode(sha256('2:S1'::bytea), 'hex'), '["S1"]'::jsonb, 'x', 1, 'realtime', 1
		UNION ALL SELECT 'items', encode(sha256('2:P1'::bytea), 'hex'), '["P1"]'::jsonb, 'x', 1, 'realtime', 1
		ON CONFLICT (entity_name, bk_hash) DO UPDATE SET deleted = false, rowversion = 'x', rowversion_ord = 1`); err != nil {
		t.Fatal(err)
	}
	res, err := f.dl.Sweep(f.ctx, f.cat, nil, "test", deadletter.ParkedSelection{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Released != 1 {
		t.Fatalf("%+v", res)
	}
	if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders`); got != "WO1|released by the sweeper" {
		t.Fatalf("target: %s", got)
	}
}

// A mapping error dead-letters 50 events; after the rule is fixed, a retry applies
// all of them and resolves them.
func TestRetryAfterMappingFix(t *testing.T) {
	f := newFixture(t)
	broken, err := mapping.Compile([]mapping.Rule{{Entity: "sites", SourceField: "DESCRIPTION", TargetField: "description", Transformation: "integer"}})
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for i := range 50 {
		bodies = append(bodies, siteEvent("upsert", fmt.Sprintf("S%02d", i), "2026-01-01T00:00:00Z", fmt.Sprintf("site %d", i)))
	}
	res := f.apply("sites", broken, bodies...)
	if res.Counts.Failed != 50 {
		t.Fatalf("%+v", res.Counts)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE stage_failed = 'mapping' AND next_retry_at > now()`); got != "50" {
		t.Fatalf("mapping dead letters scheduled for a retry: %s", got)
	}
	// Retried with the rule still broken: failed again, history kept.
	var ten []uuid.UUID
	for _, u := range strings.Fields(f.rows(`SELECT uid::text FROM bridge.failed_records ORDER BY created_at LIMIT 10`)) {
		ten = append(ten, uuid.MustParse(u))
	}
	r, err := f.dl.Retry(f.ctx, f.cat, broken, "test", deadletter.Selection{Entity: "sites", UIDs: ten})
	if err != nil || r.FailedAgain != 10 {
		t.Fatalf("%+v %v", r, err)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE retry_count = 1 AND jsonb_array_length(history) = 1`); got != "10" {
		t.Fatalf("failed again with history: %s", got)
	}
	fixed, _ := mapping.Compile([]mapping.Rule{{Entity: "sites", SourceField: "DESCRIPTION", TargetField: "description", Transformation: "uppercase"}})
	r, err = f.dl.Retry(f.ctx, f.cat, fixed, "test", deadletter.Selection{Entity: "sites"})
	if err != nil || r.Resolved != 50 || r.FailedAgain != 0 {
		t.Fatalf("%+v %v", r, err)
	}
	if got := f.rows(`SELECT count(*) FROM schedulehub.sites WHERE description LIKE 'SITE %'`); got != "50" {
		t.Fatalf("applied: %s", got)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NOT NULL AND resolution_note = 'retried: inserted'`); got != "50" {
		t.Fatalf("resolved: %s", got)
	}
	// Nothing is due any more.
	r, err = f.dl.Retry(f.ctx, f.cat, fixed, "test", deadletter.Selection{Due: true})
	if err != nil || r.Retried != 0 {
		t.Fatalf("%+v %v", r, err)
	}
}
