package main_test

import (
	"fmt"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/sim"
)

func TestScheduleCommands(t *testing.T) {
	w := newWorld(t)
	if out, code := w.cli("schedule", "enable", "items"); code != 3 || !strings.Contains(out, "syncflow schedule set items") {
		t.Errorf("enable before set (%d): %s", code, out)
	}
	out, code := w.cli("schedule", "set", "items", "--window", "19:00-07:00", "--tz", "Europe/Stockholm", "--days", "7")
	if code != 0 || !strings.Contains(out, "window 19:00-07:00 Europe/Stockholm, 7 days, disabled") {
		t.Fatalf("set (%d): %s", code, out)
	}
	for _, bad := range [][]string{
		{"schedule", "set", "items", "--window", "19:00"},
		{"schedule", "set", "items", "--tz", "Mars/Olympus"},
		{"schedule", "set", "items", "--days", "-1"},
	} {
		if out, code := w.cli(bad...); code != 2 {
			t.Errorf("%v (%d): %s", bad, code, out)
		}
	}
	if out, code := w.cli("schedule", "set", "suppliers"); code != 3 {
		t.Errorf("unknown entity (%d): %s", code, out)
	}
	if _, code := w.cli("schedule", "enable", "items"); code != 0 {
		t.Fatal("enable")
	}
	out, code = w.cli("schedule", "list")
	if code != 0 || !strings.Contains(out, "items   true     publish  19:00-07:00 Europe/Stockholm  7") {
		t.Errorf("list (%d):\n%s", code, out)
	}
	out, code = w.cli("schedule", "list", "--json")
	if code != 0 || !strings.Contains(out, `"time_zone": "Europe/Stockholm"`) {
		t.Errorf("list --json (%d):\n%s", code, out)
	}
	w.conn.Exec(w.ctx, `UPDATE bridge.background_sync_schedule SET current_offset = 42, total_rows = 100, rows_per_day = 15`)
	if out, code := w.cli("schedule", "reset", "items"); code != 0 || w.query(`SELECT current_offset, total_rows FROM bridge.background_sync_schedule`) != "0|<nil>" {
		t.Errorf("reset (%d): %s", code, out)
	}
	if _, code := w.cli("schedule", "disable", "items"); code != 0 || w.query(`SELECT is_enabled FROM bridge.background_sync_schedule`) != "false" {
		t.Error("disable")
	}
}

// The backfill process killed with SIGKILL mid-run, then run again: every row ends
// in the target, none missing.
func TestBackfillKilledMidRunResumes(t *testing.T) {
	const items = 3000
	erp := sim.New(sim.Config{Items: items})
	src := httptest.NewServer(erp.Handler(sim.ServerConfig{SlowPage: 20 * time.Millisecond}))
	defer src.Close()
	w := newWorld(t, "SYNCFLOW_APISMITH_URL="+src.URL)
	logs := service(t, w.env, "--fetch-wait", "50ms")
	// A window around now, whenever the test runs: every row tonight.
	now := time.Now().UTC()
	window := now.Add(-time.Hour).Format("15:04") + "-" + now.Add(2*time.Hour).Format("15:04")
	w.cli("schedule", "set", "items", "--window", window, "--tz", "UTC", "--days", "1", "--page-size", "100")
	w.cli("schedule", "enable", "items")
	cmd := exec.Command(binary, "backfill", "--once")
	cmd.Env = append(cmd.Environ(), w.env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for w.query(`SELECT current_offset >= 500 FROM bridge.background_sync_schedule`) != "true" {
		if time.Now().After(deadline) {
			t.Fatal("the backfill made no progress")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	offset := w.query(`SELECT current_offset FROM bridge.background_sync_schedule`)
	if offset == fmt.Sprint(items) {
		t.Fatal("the backfill finished before it was killed; the test tested nothing")
	}
	// The killed run left its lock behind with its connection: the next run takes it.
	out, code := w.cli("backfill", "--once")
	if code != 0 || !strings.Contains(out, "completed true") {
		t.Fatalf("the run after the kill (%d): %s", code, out)
	}
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.items`, fmt.Sprint(items), logs)
	eventually(t, w.conn, `SELECT count(*) FROM bridge.synced_records WHERE entity_name = 'items' AND source_stream = 'backfill'`, fmt.Sprint(items), logs)
	if got := w.query(`SELECT current_offset, completed_at IS NOT NULL FROM bridge.background_sync_schedule`); got != fmt.Sprintf("%d|true", items) {
		t.Errorf("schedule: %s (killed at offset %s)", got, offset)
	}
}

// While APISmith is down, `backfill --once` says what it waits for and when it
// tries again; the next run it prints is the one `schedule list` shows.
func TestBackfillOnceWhileTheSourceIsDown(t *testing.T) {
	w := newWorld(t, "SYNCFLOW_APISMITH_URL=http://127.0.0.1:1")
	now := time.Now().UTC()
	window := now.Add(-time.Hour).Format("15:04") + "-" + now.Add(2*time.Hour).Format("15:04")
	w.cli("schedule", "set", "items", "--window", window, "--tz", "UTC", "--days", "1")
	w.cli("schedule", "enable", "items")
	out, code := w.cli("backfill", "--once", "--apismith-retry-for", "2s", "--log-format", "json")
	if code != 1 || !strings.Contains(out, "waiting for APISmith at http://127.0.0.1:1/api/v1/entities/items/count") ||
		!strings.Contains(out, "connection refused): trying again at ") || !strings.Contains(out, "giving up at ") {
		t.Fatalf("backfill --once with the source down (%d):\n%s", code, out)
	}
	if !regexp.MustCompile(`"retry_in":"[0-9.]+m?s"`).MatchString(out) {
		t.Errorf("the log does not say when, in a duration people read:\n%s", out)
	}
	m := regexp.MustCompile(`items: published 0 rows, failed: .*, next run (\S+ \S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no next run:\n%s", out)
	}
	list, _ := w.cli("schedule", "list")
	if !strings.Contains(list, m[1]) {
		t.Errorf("backfill said the next run is %s; schedule list says:\n%s", m[1], list)
	}
}
