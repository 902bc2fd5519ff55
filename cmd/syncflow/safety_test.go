package main_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// stoppable starts `syncflow run` and returns its logs and a stop that ends it
// with SIGTERM (also at the end of the test, if not called before).
func stoppable(t *testing.T, env []string, args ...string) (*bytes.Buffer, func()) {
	t.Helper()
	var logs bytes.Buffer
	cmd := exec.Command(binary, append([]string{"run", "--http-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("syncflow run exited with %v\n%s", err, logs.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("syncflow run did not stop within 20s of SIGTERM\n%s", logs.String())
		}
	}
	t.Cleanup(stop)
	return &logs, stop
}

// snapshot is a digest of every row of the bridge and target tables and of the
// schema version: equal snapshots, nothing changed.
func (w *world) snapshot() string {
	w.t.Helper()
	rows, err := w.conn.Query(w.ctx, `SELECT table_schema, table_name FROM information_schema.tables
		WHERE table_schema IN ('bridge', 'schedulehub', 'public') AND table_type = 'BASE TABLE' ORDER BY 1, 2`)
	if err != nil {
		w.t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var schema, name string
		if err := rows.Scan(&schema, &name); err != nil {
			w.t.Fatal(err)
		}
		tables = append(tables, pgx.Identifier{schema, name}.Sanitize())
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	var parts []string
	for _, tbl := range tables {
		parts = append(parts, tbl+"="+w.query(`SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM `+tbl+` x`))
	}
	return strings.Join(parts, "\n")
}

// Every destructive command's --dry-run says what it would do and changes
// nothing; then the same commands, for real, change exactly what they chose.
func TestDryRunsChangeNothing(t *testing.T) {
	w := newWorld(t)
	logs, stop := stoppable(t, w.env, "--fetch-wait", "50ms", "--park-first-retry", "10m", "--retry-first", "10m")
	w.publish("sites", siteS1)
	w.publish("work_centers", `{"entity":"work_centers","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"CONTRACT":"S9","WORK_CENTER_NO":"WC9"}}`)
	w.publish("work_orders", workOrder("WO1", "P1"))
	w.publish("sites", `not json`)
	w.publish("sites", `{"entity":"sites","op":"upsert","rowversion":"yesterday","data":{"CONTRACT":"S2"}}`)
	w.publish("suppliers", `{"entity":"suppliers","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"ID":"X"}}`)
	eventually(t, w.conn, `SELECT (SELECT count(*) FROM bridge.pending_children), (SELECT count(*) FROM bridge.failed_records)`, "2|3", logs)
	stop()
	decode := w.query(`SELECT uid::text FROM bridge.failed_records WHERE entity_name = 'sites' AND stage_failed = 'decode'`)
	if out, code := w.cli("dlq", "resolve", decode, "--note", "garbage from a test"); code != 0 {
		t.Fatalf("resolve: %s", out)
	}
	if out, code := w.cli("schedule", "set", "items", "--window", "19:00-07:00", "--tz", "UTC", "--days", "3"); code != 0 {
		t.Fatalf("schedule set: %s", out)
	}
	w.conn.Exec(w.ctx, `UPDATE bridge.background_sync_schedule SET current_offset = 42, total_rows = 100`)
	w.conn.Exec(w.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, started_at, finished_at)
		VALUES (gen_random_uuid(), 'sites', 'realtime', 'completed', now() - interval '100 days', now() - interval '100 days')`)
	rules := filepath.Join(t.TempDir(), "rules.csv")
	os.WriteFile(rules, []byte("entity_name,source_field,target_field,transformation,default_value,is_required\nitems,UNIT_MEAS,unit_meas,trim,,false\n"), 0o644)
	if out, code := w.cli("mappings", "import", rules); code != 0 {
		t.Fatalf("import: %s", out)
	}
	empty := filepath.Join(t.TempDir(), "empty.csv")
	os.WriteFile(empty, []byte("entity_name,source_field,target_field,transformation,default_value,is_required\nitems,DESCRIPTION,description,trim,,false\n"), 0o644)
	archive := filepath.Join(t.TempDir(), "archive.jsonl")
	time.Sleep(1100 * time.Millisecond) // for --older-than 1s
	wcUID := w.query(`SELECT uid::text FROM bridge.pending_children WHERE child_entity = 'work_centers'`)
	consumersBefore := consumerNames(t, w.js, "APISMITH_CDC")

	before := w.snapshot()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dlq", "retry", "--all", "--dry-run"}, "would retry 2 dead letters (all): sites/normalization 1, suppliers/decode 1"},
		{[]string{"dlq", "retry", "--entity", "sites", "--dry-run"}, "would retry 1 dead letters (entity sites): sites/normalization 1"},
		{[]string{"dlq", "resolve", w.query(`SELECT uid::text FROM bridge.failed_records WHERE entity_name = 'suppliers'`), "--note", "dry?", "--dry-run"}, "would resolve 1 dead letters (1 UIDs): suppliers/decode 1"},
		{[]string{"dlq", "resolve", "--all", "--note", "all", "--dry-run"}, "would resolve 2 dead letters"},
		{[]string{"dlq", "purge", "--resolved", "--older-than", "1s", "--dry-run"}, "would purge 1 dead letters"},
		{[]string{"dlq", "purge", "--resolved", "--all", "--dry-run"}, "would purge 1 dead letters (all): sites/decode 1"},
		{[]string{"parked", "release", "--all", "--dry-run"}, "would release 2 parked children (all): work_centers waiting for sites 1, work_orders waiting for items 1"},
		{[]string{"parked", "expire", "--entity", "work_centers", "--dry-run"}, "would expire 1 parked children (entity work_centers): work_centers waiting for sites 1"},
		{[]string{"parked", "expire", wcUID, "--dry-run"}, "would expire 1 parked children (1 UIDs)"},
		{[]string{"parked", "expire", "--older-than", "2d", "--dry-run"}, "would expire 0 parked children: none matches"},
		{[]string{"prune", "--older-than", "1s", "--archive", archive, "--dry-run"}, "would remove 1 resolved dead letters and"},
		{[]string{"replay", "--entity", "sites", "--since", "1h", "--dry-run"}, "would replay 3 sites events from APISMITH_CDC"},
		{[]string{"replay", "--entity", "sites", "--from-seq", "1", "--to-seq", "4", "--dry-run"}, "would replay 2 sites events"},
		{[]string{"mappings", "import", empty, "--replace", "--dry-run"}, "removed: items UNIT_MEAS -> unit_meas (trim)"},
		{[]string{"schedule", "reset", "items", "--dry-run"}, "would reset items: its progress (42 of 100 rows)"},
		{[]string{"migrate", "down", "--dry-run"}, "bridge.failed_records"},
		{[]string{"migrate", "down", "1", "--dry-run"}, "would revert 1 migrations: 00"},
		{[]string{"migrate", "force", "1", "--dry-run"}, "would record schema version 1 (now "},
	} {
		out, code := w.cli(tc.args...)
		if code != 0 || !strings.Contains(out, tc.want) || !strings.Contains(out, "dry run: nothing was changed") {
			t.Errorf("%v (%d): want %q:\n%s", tc.args, code, tc.want, out)
		}
		if after := w.snapshot(); after != before {
			t.Fatalf("%v changed the database", tc.args)
		}
	}
	if _, err := os.Stat(archive); !os.IsNotExist(err) {
		t.Errorf("prune --dry-run created its archive: %v", err)
	}
	if got := consumerNames(t, w.js, "APISMITH_CDC"); got != consumersBefore {
		t.Errorf("replay --dry-run left consumers: %s (before: %s)", got, consumersBefore)
	}

	// For real: the filter chooses exactly what it says.
	out, code := w.cli("parked", "expire", "--entity", "work_centers")
	if code != 0 || !strings.Contains(out, "1 expired to dead letters") {
		t.Errorf("parked expire --entity (%d): %s", code, out)
	}
	if got := w.query(`SELECT child_entity FROM bridge.pending_children`); got != "work_orders" {
		t.Errorf("still parked: %s", got)
	}
	out, code = w.cli("dlq", "purge", "--resolved", "--older-than", "1s")
	if code != 0 || !strings.Contains(out, "purged 1 resolved dead letters") {
		t.Errorf("purge (%d): %s", code, out)
	}
	if got := w.query(`SELECT entity_name, stage_failed FROM bridge.failed_records ORDER BY 1, 2`); got != "sites|normalization\nsuppliers|decode\nwork_centers|orphan" {
		t.Errorf("dead letters left: %s", got)
	}
	out, code = w.cli("dlq", "resolve", "--reason", "rowversion", "--note", "bad versions from a test")
	if code != 0 || !strings.Contains(out, "resolved 1 dead letters") {
		t.Errorf("resolve --reason (%d): %s", code, out)
	}
	if got := w.query(`SELECT entity_name FROM bridge.failed_records WHERE resolved_at IS NOT NULL`); got != "sites" {
		t.Errorf("resolved: %s", got)
	}
}

// Dead letters at scale: 300 failures with three causes are triaged with groups,
// retried and resolved by fingerprint, and listed page by page; filters that
// name nothing known, or nothing at all, are refused.
func TestDeadLettersAtScale(t *testing.T) {
	w := newWorld(t)
	rules := filepath.Join(t.TempDir(), "rules.csv")
	header := "entity_name,source_field,target_field,transformation,default_value,is_required\n"
	os.WriteFile(rules, []byte(header+"items,LEAD_TIME_DAYS,lead_time_days,integer,,true\n"), 0o644)
	if out, code := w.cli("mappings", "import", rules); code != 0 {
		t.Fatalf("import: %s", out)
	}
	logs := service(t, w.env, "--fetch-wait", "50ms", "--retry-first", "10m")
	for i := range 300 {
		var body string
		switch i % 3 {
		case 0: // no lead time: fixed by a default
			body = fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":"20261126080000","data":{"PART_NO":"A%03d"}}`, i)
		case 1: // a lead time that is not a number
			body = fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":"20261126080000","data":{"PART_NO":"B%03d","LEAD_TIME_DAYS":"%d days"}}`, i, i)
		default: // a rowversion in the wrong form
			body = fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":"2026-11-26T08:%02d:00Z","data":{"PART_NO":"C%03d","LEAD_TIME_DAYS":1}}`, i%60, i)
		}
		w.publish("items", body)
	}
	eventually(t, w.conn, `SELECT count(*) FROM bridge.failed_records`, "300", logs)
	out, code := w.cli("dlq", "groups", "--json")
	if code != 0 {
		t.Fatalf("groups (%d): %s", code, out)
	}
	var groups []struct {
		Fingerprint string `json:"fingerprint"`
		Stage       string `json:"stage_failed"`
		Count       int    `json:"count"`
		Sample      string `json:"sample_error"`
	}
	if err := json.Unmarshal([]byte(out), &groups); err != nil || len(groups) != 3 {
		t.Fatalf("want three groups: %v\n%s", err, out)
	}
	fingerprint := map[string]string{}
	for _, g := range groups {
		switch {
		case g.Count != 100:
			t.Errorf("group %+v: want 100", g)
		case strings.Contains(g.Sample, "is missing"):
			fingerprint["missing"] = g.Fingerprint
		case strings.Contains(g.Sample, "is not an integer"):
			fingerprint["integer"] = g.Fingerprint
		case g.Stage == "normalization":
			fingerprint["version"] = g.Fingerprint
		}
	}
	if len(fingerprint) != 3 {
		t.Fatalf("the groups are not the three causes: %s", out)
	}
	table, _ := w.cli("dlq", "groups")
	if !strings.Contains(table, "required field LEAD_TIME_DAYS is missing") || !strings.Contains(table, "? is not an integer") {
		t.Errorf("groups table:\n%s", table)
	}
	// Fix the missing lead time with a default, and retry that group only.
	os.WriteFile(rules, []byte(header+"items,LEAD_TIME_DAYS,lead_time_days,integer,0,true\n"), 0o644)
	if out, code := w.cli("mappings", "import", rules); code != 0 {
		t.Fatalf("import: %s", out)
	}
	if out, code := w.cli("dlq", "retry", "--fingerprint", fingerprint["missing"], "--dry-run"); code != 0 || !strings.Contains(out, "would retry 100 dead letters") {
		t.Errorf("retry --dry-run (%d): %s", code, out)
	}
	out, code = w.cli("dlq", "retry", "--fingerprint", fingerprint["missing"])
	if code != 0 || !strings.Contains(out, "retrying 100 dead letters") || !strings.Contains(out, "retried 100 dead letters: 100 resolved, 0 failed again") {
		t.Errorf("retry by fingerprint (%d): %s", code, out)
	}
	out, code = w.cli("dlq", "resolve", "--fingerprint", fingerprint["version"], "--note", "the publisher sent timestamps; fixed upstream")
	if code != 0 || !strings.Contains(out, "resolved 100 dead letters") {
		t.Errorf("resolve by fingerprint (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL`); got != "100" {
		t.Errorf("unresolved after triage: %s", got)
	}
	if got := w.query(`SELECT count(*) FROM schedulehub.items WHERE part_no LIKE 'A%'`); got != "100" {
		t.Errorf("items applied by the retry: %s", got)
	}
	// Pages: "N of M shown" and a cursor that continues where the page ended.
	out, code = w.cli("dlq", "list", "--unresolved", "--limit", "40")
	m := regexp.MustCompile(`40 of 100 dead letters shown; the next page: add --after (\S+)`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("first page (%d): %s", code, out)
	}
	seen := map[string]bool{}
	cursor := m[1]
	pages := 1
	for cursor != "" {
		out, code = w.cli("dlq", "list", "--unresolved", "--limit", "40", "--after", cursor, "--json")
		if code != 0 {
			t.Fatalf("page after %s (%d): %s", cursor, code, out)
		}
		for _, u := range regexp.MustCompile(`"uid": "([^"]+)"`).FindAllStringSubmatch(out, -1) {
			if seen[u[1]] {
				t.Errorf("%s shown twice", u[1])
			}
			seen[u[1]] = true
		}
		cursor = ""
		if m := regexp.MustCompile(`the next page: add --after (\S+)`).FindStringSubmatch(out); m != nil {
			cursor = m[1]
		}
		pages++
	}
	if len(seen) != 60 || pages != 3 {
		t.Errorf("pages after the first: %d dead letters in %d pages", len(seen), pages)
	}
	// What filters refuse.
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"dlq", "retry"}, 2, "say which dead letters to retry"},
		{[]string{"dlq", "resolve", "--note", "x"}, 2, "say which dead letters to resolve"},
		{[]string{"dlq", "purge", "--resolved"}, 2, "say which dead letters to purge"},
		{[]string{"dlq", "retry", "--all", "--entity", "items"}, 2, "--all chooses every dead letter and cannot go with UIDs or filters"},
		{[]string{"parked", "release"}, 2, "say which parked children to release"},
		{[]string{"parked", "expire", "--all", "--entity", "work_centers"}, 2, "--all chooses every parked child"},
		{[]string{"dlq", "list", "--entity", "nope"}, 3, `entity "nope" is not in the catalog; its entities: items, sites, work_centers, work_orders, work_order_operations; no dead letter has it either`},
		{[]string{"dlq", "list", "--entity", "work_order"}, 3, `entity "work_order" is not in the catalog (did you mean work_orders?)`},
		{[]string{"replay", "--entity", "site", "--since", "1h"}, 3, `entity "site" is not in the catalog (did you mean sites?); its entities: items,`},
		{[]string{"dlq", "retry", "--stage", "typing"}, 3, `"typing" is not a stage`},
		{[]string{"dlq", "groups", "--stage", "typing"}, 3, `"typing" is not a stage`},
		{[]string{"dlq", "list", "--stage", "decod"}, 3, `"decod" is not a stage (did you mean decode?); the stages: decode,`},
		{[]string{"parked", "list", "--entity", "nope"}, 3, `entity "nope" is not in the catalog`},
		{[]string{"parked", "list", "--entity", "Items"}, 3, `entity "Items" is not in the catalog (did you mean items?)`},
		{[]string{"parked", "release", "--parent", "nope"}, 3, `entity "nope" is not in the catalog`},
		{[]string{"dlq", "retry", "--fingerprint", "xyz"}, 2, "is not a fingerprint"},
		{[]string{"dlq", "retry", "--fingerprint", "000000000000"}, 3, "no dead letter has the fingerprint 000000000000"},
		{[]string{"dlq", "list", "--after", "0190d6a0-0000-7000-8000-000000000000"}, 3, "the --after cursor"},
		{[]string{"dlq", "list", "--since", "tomorrow-ish"}, 2, "is not a time"},
		{[]string{"dlq", "list", "--since", "1h", "--until", "2h"}, 2, "is not before --until"},
		{[]string{"dlq", "list", "--resolved", "--unresolved"}, 2, "exclude each other"},
		{[]string{"dlq", "list", "--format", "csv"}, 2, "--format is not a flag of `syncflow dlq list`"},
		{[]string{"backfill", "--entity", "nope", "--once"}, 3, `entity "nope" is not in the catalog`},
		{[]string{"schedule", "enable", "nope"}, 3, `entity "nope" is not in the catalog`},
	} {
		if out, code := w.cli(tc.args...); code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%v (%d, want %d): %s", tc.args, code, tc.code, out)
		}
	}
}

// prune removes a row only once its archive holds it: with an archive that
// cannot be written, nothing is removed and prune fails.
func TestPruneArchiveThatCannotBeWritten(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Fatal("this test writes to /dev/full, a device that is always full")
	}
	w := newWorld(t)
	w.conn.Exec(w.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, started_at, finished_at)
		SELECT gen_random_uuid(), 'sites', 'realtime', 'completed', now() - interval '100 days', now() - interval '100 days' FROM generate_series(1, 10)`)
	out, code := w.cli("prune", "--older-than", "90d", "--archive", "/dev/full")
	if code != 1 || !strings.Contains(out, "no space left on device") || !strings.Contains(out, "the rest is still in place") {
		t.Errorf("prune into a full archive (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.sync_batches`); got != "10" {
		t.Errorf("%s batches left, want all 10", got)
	}
	if out, code := w.cli("prune", "--older-than", "90d", "--archive", filepath.Join(t.TempDir(), "no", "such", "dir.jsonl")); code != 1 || !strings.Contains(out, "nothing was removed") {
		t.Errorf("prune into an archive that cannot be opened (%d): %s", code, out)
	}
}

// migrate down of everything asks on a terminal, and takes only "yes"; without a
// terminal it wants --yes.
func TestMigrateDownAsksFirst(t *testing.T) {
	script, err := exec.LookPath("script")
	if err != nil {
		t.Fatal("this test runs syncflow on a terminal with script(1) from util-linux")
	}
	w := newWorld(t)
	onTerminal := func(answer string) (string, int) {
		cmd := exec.Command(script, "-qec", binary+" migrate down", "/dev/null")
		cmd.Env = append(os.Environ(), w.env...)
		cmd.Stdin = strings.NewReader(answer)
		out, err := cmd.CombinedOutput()
		if exit, ok := err.(*exec.ExitError); ok {
			return string(out), exit.ExitCode()
		}
		return string(out), 0
	}
	if out, code := w.cli("migrate", "down"); code != 2 || !strings.Contains(out, "add --yes") || !strings.Contains(out, "bridge.failed_records") {
		t.Errorf("without a terminal (%d): %s", code, out)
	}
	out, code := onTerminal("y\n")
	if code != 2 || !strings.Contains(out, "Type yes to revert them:") || !strings.Contains(out, "not confirmed") {
		t.Errorf("answered y (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM information_schema.tables WHERE table_schema = 'bridge'`); got == "0" {
		t.Fatal("the schema was dropped without a yes")
	}
	if out, code := onTerminal("yes\n"); code != 0 || !strings.Contains(out, "schema version: none") {
		t.Errorf("answered yes (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM information_schema.tables WHERE table_schema = 'bridge'`); got != "0" {
		t.Errorf("%s bridge tables left after yes", got)
	}
}
