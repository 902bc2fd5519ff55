package main_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/streams"
)

// Entities and columns are data: with two replicas running, a new entity (a
// child of sites) is added with `catalog apply` while its events are already
// being published, children before their parent; then a column is added to its
// table and mapped; then the entity is removed and its consumers pruned. No
// process restarts, every event ends in the target, nothing stays
// dead-lettered, and a removed entity's history is not dead-lettered again.
func TestEntitiesAndColumnsAreData(t *testing.T) {
	w := newWorld(t)
	args := []string{"--fetch-wait", "50ms", "--stray-interval", "300ms", "--mapping-resync", "1s",
		"--dead-letter-interval", "200ms", "--retry-first", "200ms"}
	r1 := service(t, w.env, append([]string{"--replica", "r1"}, args...)...)
	r2 := service(t, w.env, append([]string{"--replica", "r2"}, args...)...)
	waitForLog(t, r1, "syncflow running")
	waitForLog(t, r2, "syncflow running")
	w.publish("sites", siteS1)
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.sites`, "1", r1)
	if _, err := w.conn.Exec(w.ctx, routingsTable); err != nil {
		t.Fatal(err)
	}
	routing := func(n int, version string, extra string) string {
		return fmt.Sprintf(`{"entity":"routings","op":"upsert","rowversion":"%s","data":{"ROUTING_NO":"R%02d","CONTRACT":"S%d","DESCRIPTION":"routing %d"%s}}`,
			version, n, 1+n%2, n, extra)
	}

	// Before the entity exists its events are strays: dead-lettered, not lost.
	for n := 1; n <= 10; n++ {
		w.publish("routings", routing(n, "2026-11-27T08:00:00Z", ""))
	}
	eventually(t, w.conn, `SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL AND stage_failed = 'decode' AND entity_name = 'routings'`, "10", r1)

	// The entity joins while its events keep coming; half of them belong to a
	// site that arrives last.
	for n := 11; n <= 15; n++ {
		w.publish("routings", routing(n, "2026-11-27T08:00:00Z", ""))
	}
	if out, code := w.cli("catalog", "apply", builtInWith(t, routingsEntity)); code != 0 {
		t.Fatalf("catalog apply (%d): %s", code, out)
	}
	for n := 16; n <= 20; n++ {
		w.publish("routings", routing(n, "2026-11-27T08:00:00Z", ""))
	}
	if out, code := w.cli("streams", "apply"); code != 0 || !strings.Contains(out, "create     APISMITH_CDC         syncflow_cdc_routings") {
		t.Fatalf("streams apply (%d): %s", code, out)
	}
	w.publish("sites", strings.ReplaceAll(siteS1, "S1", "S2"))
	eventually(t, w.conn, `SELECT count(*), count(*) FILTER (WHERE contract = 'S2') FROM schedulehub.routings`, "20|10", r1)
	eventually(t, w.conn, `SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL`, "0", r1)
	eventually(t, w.conn, `SELECT count(*) FROM bridge.pending_children`, "0", r1)

	// The ERP starts sending a field ScheduleHub has no column for: it is
	// counted, never dropped in silence.
	w.publish("routings", routing(2, "2026-11-27T08:30:00Z", `,"PLANNER_ID":"P3"`))
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := w.cli("drift", "--entity", "routings")
		if strings.Contains(out, "PLANNER_ID") && strings.Contains(out, "P3") && strings.Contains(out, "not taken") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("syncflow drift does not list the new field:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, code := w.cli("catalog", "check"); code != 0 || !strings.Contains(out, "fields seen in events that nothing takes: PLANNER_ID") {
		t.Errorf("catalog check does not report the field seen (%d):\n%s", code, out)
	}

	// A column is added and mapped: events that carry it fill it, without a
	// restart.
	if _, err := w.conn.Exec(w.ctx, `ALTER TABLE schedulehub.routings ADD COLUMN planner text`); err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(t.TempDir(), "rules.csv")
	if err := os.WriteFile(rules, []byte("entity_name,source_field,target_field,transformation,default_value,is_required\nroutings,PLANNER_ID,planner,trim,,false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := w.cli("mappings", "import", rules); code != 0 {
		t.Fatalf("mappings import (%d): %s", code, out)
	}
	// Rules apply to the batches after a replica has read them.
	waitForLog(t, r1, `"msg":"field mappings in force","rules":1`)
	waitForLog(t, r2, `"msg":"field mappings in force","rules":1`)
	w.publish("routings", routing(1, "2026-11-27T09:00:00Z", `,"PLANNER_ID":" P7 "`))
	eventually(t, w.conn, `SELECT planner FROM schedulehub.routings WHERE routing_no = 'R01'`, "P7", r1)
	if out, _ := w.cli("drift", "--entity", "routings"); !strings.Contains(out, "taken now") {
		t.Errorf("syncflow drift does not say the field is taken now:\n%s", out)
	}

	// The entity leaves: its consumers stop, and are pruned; its history is not
	// dead-lettered again, and a new event of it is a stray once more.
	shipped, err := os.ReadFile(filepath.Join("..", "..", "streams", streams.CatalogFile))
	if err != nil {
		t.Fatal(err)
	}
	without := filepath.Join(t.TempDir(), "catalog.yaml")
	if err := os.WriteFile(without, append(shipped, "\n# routings went back to the planners' spreadsheet\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := w.cli("catalog", "apply", without); code != 0 || !strings.Contains(out, "none added, routings removed") {
		t.Fatalf("catalog apply without routings (%d): %s", code, out)
	}
	waitForLog(t, r1, "entity left the catalog: stopping its consumer")
	waitForLog(t, r2, "entity left the catalog: stopping its consumer")
	out, code := w.cli("streams", "apply", "--prune")
	if code != 0 || !strings.Contains(out, "delete     APISMITH_CDC         syncflow_cdc_routings") {
		t.Fatalf("streams apply --prune (%d): %s", code, out)
	}
	if names := consumerNames(t, w.js, "APISMITH_CDC"); strings.Contains(names, "syncflow_cdc_routings") {
		t.Errorf("the removed entity's consumer is left: %s", names)
	}
	w.publish("routings", routing(21, "2026-11-27T10:00:00Z", ""))
	eventually(t, w.conn, `SELECT string_agg(error_message, '; ') FILTER (WHERE resolved_at IS NULL) IS NOT NULL, count(*) FILTER (WHERE resolved_at IS NULL)
		FROM bridge.failed_records WHERE entity_name = 'routings'`, "true|1", r1)
	if got := w.query(`SELECT count(*) FROM schedulehub.routings`); got != "20" {
		t.Errorf("the removed entity's rows: %s, want the 20 written before", got)
	}
	for name, logs := range map[string]fmt.Stringer{"r1": r1, "r2": r2} {
		if n := strings.Count(logs.String(), "syncflow running"); n != 1 {
			t.Errorf("replica %s started %d times, want once:\n%s", name, n, logs)
		}
	}
}
