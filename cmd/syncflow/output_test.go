package main_test

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// status fits 120 columns; the details are under --wide and --json. A dead
// letter of a subject outside the catalog is counted, with a hint that finds it.
func TestStatusFitsAndPointsAtEveryDeadLetter(t *testing.T) {
	w := newWorld(t)
	logs := service(t, w.env, "--fetch-wait", "50ms", "--stray-interval", "100ms")
	w.publish("sites", siteS1)
	w.publish("work_order_operations", op("WO-1001", 10, "WC-7", "a child waiting for its parents"))
	w.publish("items", `{"entity":"items","op":"upsert","rowversion":"not a version","data":{"PART_NO":"P1"}}`)
	w.publish("suppliers", `{"entity":"suppliers","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"ID":"X"}}`)
	eventually(t, w.conn, `SELECT count(*) FROM bridge.failed_records`, "2", logs)
	w.cli("schedule", "set", "items", "--window", "19:00-07:00", "--tz", "Europe/Stockholm", "--days", "7")
	w.cli("schedule", "enable", "items")
	out, code := w.cli("status")
	if code != 0 {
		t.Fatalf("status (%d): %s", code, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(line); n > 120 {
			t.Errorf("a line of %d columns:\n%s", n, line)
		}
	}
	for _, want := range []string{"work_order_operations", "syncflow status --wide", "1 unresolved dead letters on subjects no catalog entity owns (suppliers 1):\n  syncflow dlq list --outside-catalog --unresolved"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	hint := regexp.MustCompile(`syncflow (dlq list --outside-catalog --unresolved)`).FindStringSubmatch(out)
	if hint == nil {
		t.Fatalf("no hint:\n%s", out)
	}
	found, code := w.cli(strings.Fields(hint[1])...)
	if code != 0 || !strings.Contains(found, "suppliers") || strings.Contains(found, "no dead letters match") {
		t.Errorf("the hint's command does not find them (%d):\n%s", code, found)
	}
	wide, code := w.cli("status", "--wide")
	if code != 0 || !regexp.MustCompile(`\d+ in, \d+ ins, \d+ upd, \d+ unch, \d+ stale, \d+ del, \d+ parked, \d+ released, \d+ failed`).MatchString(wide) || !strings.Contains(wide, "normalization 1") {
		t.Errorf("status --wide (%d):\n%s", code, wide)
	}
	if out, code := w.cli("status", "--json", "--wide"); code != 2 {
		t.Errorf("--json --wide (%d): %s", code, out)
	}
}

func TestVersion(t *testing.T) {
	w := &world{t: t}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, code := w.cli(args...)
		if code != 0 || !regexp.MustCompile(`^syncflow \S.*, commit \S+.*, built with go1\.\d+`).MatchString(out) {
			t.Errorf("%v (%d): %q", args, code, out)
		}
	}
}

// The retries of a dead letter no automatic retry takes say how it is retried:
// by hand, or also when its entity joins the catalog, for the message of a
// subject no catalog entity owns, not for a malformed message of one it does.
func TestDeadLetterRetriesSayHow(t *testing.T) {
	w := newWorld(t)
	logs := service(t, w.env, "--fetch-wait", "100ms")
	w.publish("items", `{"entity":"items","op":"upsert",`)
	w.publish("suppliers", `{"entity":"suppliers","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"ID":"X"}}`)
	eventually(t, w.conn, `SELECT count(*) FROM bridge.failed_records`, "2", logs)
	out, code := w.cli("dlq", "list")
	items := regexp.MustCompile(`(?m)^\S+\s+items\s+decode\s.*\(by hand only\)`)
	suppliers := regexp.MustCompile(`(?m)^\S+\s+suppliers\s+decode\s.*\(by hand, or when its entity joins the catalog\)`)
	if code != 0 || !items.MatchString(out) || !suppliers.MatchString(out) {
		t.Errorf("dlq list (%d):\n%s", code, out)
	}
	uid := w.query(`SELECT uid::text FROM bridge.failed_records WHERE entity_name = 'items'`)
	if out, code := w.cli("dlq", "show", uid); code != 0 || !strings.Contains(out, "0 (by hand only)") {
		t.Errorf("dlq show %s (%d):\n%s", uid, code, out)
	}
}
