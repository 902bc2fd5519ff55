package main_test

import (
	"strings"
	"testing"
)

// dlq list --match finds dead letters by what their event contains, scanning
// (and saying so) without the index and using it once db gin enable built it;
// a --match that is not a JSON object is refused with an example.
func TestDeadLetterSearch(t *testing.T) {
	w := newWorld(t)
	w.query(`INSERT INTO bridge.failed_records (uid, entity_name, raw_bytes, raw_data, stage_failed, error_message)
		SELECT gen_random_uuid(), 'items', '\x7b7d', jsonb_build_object('entity', 'items', 'data', jsonb_build_object('PART_NO', 'P' || i)), 'mapping', 'bad ' || i
		FROM generate_series(1, 20) i`)

	out, code := w.cli("dlq", "list", "--match", `{"data":{"PART_NO":"P7"}}`)
	if code != 0 || !strings.Contains(out, "bad 7") || strings.Contains(out, "bad 17") || !strings.Contains(out, "no GIN index on the dead letters' events: --match reads every dead letter") {
		t.Errorf("dlq list --match without the index (%d): %s", code, out)
	}
	for _, bad := range []string{`{"data":`, `"P7"`, `7`} {
		if out, code := w.cli("dlq", "list", "--match", bad); code != 2 || !strings.Contains(out, `--match '{"data":{"PART_NO":"X"}}'`) {
			t.Errorf("--match %s (%d): %s", bad, code, out)
		}
	}
	if out, code := w.cli("db", "gin", "rebuild"); code != 2 || !strings.Contains(out, "takes enable or disable") {
		t.Errorf("db gin rebuild (%d): %s", code, out)
	}
	if out, code := w.cli("db", "gin", "enable"); code != 0 || !strings.Contains(out, "is built") {
		t.Fatalf("db gin enable (%d): %s", code, out)
	}
	out, code = w.cli("dlq", "list", "--match", `{"data":{"PART_NO":"P7"}}`, "--json")
	if code != 0 || !strings.Contains(out, "bad 7") || strings.Contains(out, "no GIN index") {
		t.Errorf("dlq list --match with the index (%d): %s", code, out)
	}
	// The other dlq commands choose by content too.
	if out, code := w.cli("dlq", "resolve", "--match", `{"data":{"PART_NO":"P7"}}`, "--note", "fixed by hand"); code != 0 || !strings.Contains(out, "1") {
		t.Errorf("dlq resolve --match (%d): %s", code, out)
	}
	if got := w.query(`SELECT string_agg(error_message, ',') FROM bridge.failed_records WHERE resolved_at IS NOT NULL`); got != "bad 7" {
		t.Errorf("resolved: %s", got)
	}
	if out, code := w.cli("db", "gin", "disable"); code != 0 || !strings.Contains(out, "dropped") {
		t.Errorf("db gin disable (%d): %s", code, out)
	}
	if out, code := w.cli("db", "gin", "disable"); code != 0 || !strings.Contains(out, "nothing to do") {
		t.Errorf("db gin disable again (%d): %s", code, out)
	}
}
