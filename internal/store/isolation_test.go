package store_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/mapping"
)

// failParking makes parking the work order orderNo fail with SQLSTATE code, as a
// fault the records would be blamed for (or not) in ways no test can otherwise
// reach: the failure escapes the isolation of the target writes.
func (f *fixture) failParking(orderNo, code string) {
	f.t.Helper()
	if _, err := f.conn.Exec(f.ctx, fmt.Sprintf(`
		CREATE FUNCTION bridge.test_fail_parking() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.child_payload->'data'->>'ORDER_NO' = %s THEN
				RAISE EXCEPTION 'injected failure' USING ERRCODE = %s;
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER test_fail_parking BEFORE INSERT ON bridge.pending_children
			FOR EACH ROW EXECUTE FUNCTION bridge.test_fail_parking();`, quote(orderNo), quote(code))); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		_, _ = f.conn.Exec(f.ctx, `DROP TRIGGER IF EXISTS test_fail_parking ON bridge.pending_children; DROP FUNCTION IF EXISTS bridge.test_fail_parking()`)
	})
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// A row the bridge tables reject (here while parking it) fails alone: the batch is
// written again with each record under a savepoint, and the rest commits.
func TestRowRejectedOutsideTheTargetWriteIsIsolated(t *testing.T) {
	f := newFixture(t)
	f.failParking("WO2", "23514")
	res := f.apply("work_orders", nil, woEvent("WO1", "2026-01-01T00:00:01Z", "a"), woEvent("WO2", "2026-01-01T00:00:01Z", "b"),
		woEvent("WO3", "2026-01-01T00:00:01Z", "c"))
	if res.Counts.Parked != 2 || res.Counts.Failed != 1 {
		t.Fatalf("%+v", res.Counts)
	}
	if got := f.rows(`SELECT stage_failed, error_message LIKE '%injected failure%' FROM bridge.failed_records`); got != "write|true" {
		t.Fatalf("dead letter: %s", got)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.pending_children`); got != "2" {
		t.Fatalf("%s parked", got)
	}
}

// One dead letter that fails its retry in an unforeseen way (any error but an
// unavailable database) fails again alone, its next retry pushed back; the others
// are resolved, and the round does not fail.
func TestRetryIsolatesEachRecord(t *testing.T) {
	f := newFixture(t)
	broken, _ := mapping.Compile([]mapping.Rule{{Entity: "work_orders", SourceField: "STATUS", TargetField: "status", Transformation: "integer"}})
	f.apply("work_orders", broken, woEvent("WO1", "2026-01-01T00:00:01Z", "a"), woEvent("WO2", "2026-01-01T00:00:01Z", "b"),
		woEvent("WO3", "2026-01-01T00:00:01Z", "c"))
	if _, err := f.conn.Exec(f.ctx, `UPDATE bridge.failed_records SET next_retry_at = now() - interval '1s'`); err != nil {
		t.Fatal(err)
	}
	f.failParking("WO2", "XX000")
	r, err := f.dl.Retry(f.ctx, f.cat, nil, "test", deadletter.Selection{Due: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Retried != 3 || r.Resolved != 2 || r.FailedAgain != 1 {
		t.Fatalf("%+v", r)
	}
	got := f.rows(`SELECT normalized_data->>'ORDER_NO', stage_failed, retry_count, next_retry_at > now() + interval '30s', error_message LIKE '%injected failure%'
		FROM bridge.failed_records WHERE resolved_at IS NULL`)
	if got != "WO2|write|1|true|true" {
		t.Fatalf("the record to blame: %s", got)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.pending_children`); got != "2" {
		t.Fatalf("%s parked (the two others wait for their parents)", got)
	}
}
