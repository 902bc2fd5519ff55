package main_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/syncflow/syncflow/streams"
)

// routingsEntity is an entity the shipped catalog does not have, a child of
// sites, written to a table the test creates.
const routingsEntity = `
  routings:
    key: [ROUTING_NO]
    parents:
      - entity: sites
        fields: [CONTRACT]
    target:
      table: schedulehub.routings
      key: [routing_no]
`

const routingsTable = `CREATE TABLE schedulehub.routings (
	routing_no text PRIMARY KEY, contract text NOT NULL, description text, synced_at timestamptz)`

// builtInWith returns the path of the shipped catalog with extra appended to
// its entities.
func builtInWith(t *testing.T, extra string) string {
	t.Helper()
	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "catalog.yaml")
	if err := os.WriteFile(file, append(data, []byte(extra)...), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// The catalog is stored as versions: apply checks the file against the
// database, shows the diff, and stores it; show prints it byte for byte;
// history lists the versions; the same file again stores nothing.
func TestCatalogApplyShowHistory(t *testing.T) {
	w := newWorld(t)
	file := builtInWith(t, routingsEntity)

	// The target table does not exist yet: refused, nothing stored.
	out, code := w.cli("catalog", "apply", file)
	if code != 1 || !strings.Contains(out, `entity "routings": target table schedulehub.routings does not exist`) || !strings.Contains(out, "nothing was stored") {
		t.Errorf("apply before the table exists (%d): %s", code, out)
	}
	if _, err := w.conn.Exec(w.ctx, routingsTable); err != nil {
		t.Fatal(err)
	}
	out, code = w.cli("catalog", "apply", file, "--dry-run")
	if code != 0 || !strings.Contains(out, "routings added, none removed, none changed") || !strings.Contains(out, "+    key: [ROUTING_NO]") || !strings.Contains(out, "dry run: nothing stored") {
		t.Errorf("dry run (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.catalog_versions`); got != "1" {
		t.Errorf("the dry run stored a version: %s versions", got)
	}
	out, code = w.cli("catalog", "apply", file, "--note", "routings for the planners")
	if code != 0 || !strings.Contains(out, "stored catalog version 2") {
		t.Errorf("apply (%d): %s", code, out)
	}
	out, code = w.cli("catalog", "apply", file)
	if code != 0 || !strings.Contains(out, "the stored catalog (version 2) is the same: nothing to do") {
		t.Errorf("apply again (%d): %s", code, out)
	}
	want, _ := os.ReadFile(file)
	if out, code = w.cli("catalog", "show"); code != 0 || out != string(want) {
		t.Errorf("show (%d) is not the file byte for byte:\n%s", code, out)
	}
	shipped, _ := fs.ReadFile(streams.FS, streams.CatalogFile)
	if out, code = w.cli("catalog", "show", "--version", "1"); code != 0 || out != string(shipped) {
		t.Errorf("show --version 1 (%d) is not the built-in catalog", code)
	}
	if out, code = w.cli("catalog", "show", "--version", "7"); code != 3 || !strings.Contains(out, "there is no catalog version 7") {
		t.Errorf("show of a version that does not exist (%d): %s", code, out)
	}
	out, code = w.cli("catalog", "history")
	if code != 0 || !strings.Contains(out, "routings for the planners") || strings.Count(out, "\n") != 3 {
		t.Errorf("history (%d): %s", code, out)
	}
	// Every command now reads the stored catalog: routings is known.
	if out, code = w.cli("dlq", "list", "--entity", "routings"); code != 0 {
		t.Errorf("a command does not know the stored catalog's new entity (%d): %s", code, out)
	}
}

// A mistake in the file is reported by line and stores nothing.
func TestCatalogApplyRefusesMistakes(t *testing.T) {
	w := newWorld(t)
	bad := builtInWith(t, "\n  suppliers:\n    key: [SUPPLIER_ID]\n    rowvresion: timestamp\n    target: {table: schedulehub.suppliers, key: [supplier_id]}\n")
	out, code := w.cli("catalog", "apply", bad)
	if code != 1 || !strings.Contains(out, "unknown setting rowvresion (did you mean rowversion?)") {
		t.Errorf("a misspelled setting (%d): %s", code, out)
	}
	if out, code = w.cli("catalog", "apply", filepath.Join(t.TempDir(), "missing.yaml")); code != 1 || !strings.Contains(out, "no such file") {
		t.Errorf("a file that does not exist (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.catalog_versions`); got != "1" {
		t.Errorf("%s versions after refused applies", got)
	}
	// A mapping rule the new catalog's target cannot take is refused too.
	if _, err := w.conn.Exec(w.ctx, routingsTable+`;
		INSERT INTO bridge.field_mappings (uid, entity_name, source_field, target_field) VALUES (gen_random_uuid(), 'routings', 'DESC', 'descripton')`); err != nil {
		t.Fatal(err)
	}
	out, code = w.cli("catalog", "apply", builtInWith(t, routingsEntity))
	if code != 1 || !strings.Contains(out, "descripton") || !strings.Contains(out, "nothing was stored") {
		t.Errorf("a rule for a column the target does not have (%d): %s", code, out)
	}
}

// Two operators applying at once: versions stay one apart, and the same
// document is stored once.
func TestCatalogConcurrentApply(t *testing.T) {
	w := newWorld(t)
	if _, err := w.conn.Exec(w.ctx, routingsTable); err != nil {
		t.Fatal(err)
	}
	file := builtInWith(t, routingsEntity)
	var wg sync.WaitGroup
	codes := make([]int, 4)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, codes[i] = w.cli("catalog", "apply", file)
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 0 {
			t.Errorf("apply %d exited %d", i, c)
		}
	}
	if got := w.query(`SELECT string_agg(version::text, ',' ORDER BY version) FROM bridge.catalog_versions`); got != "1,2" {
		t.Errorf("versions after four concurrent applies of one file: %s, want 1,2", got)
	}
}

// check compares the catalog with the target tables table by table, and says
// whether it fits; it stores nothing.
func TestCatalogCheck(t *testing.T) {
	w := newWorld(t)
	if _, err := w.conn.Exec(w.ctx, `INSERT INTO bridge.field_mappings (uid, entity_name, source_field, target_field, transformation)
		VALUES (gen_random_uuid(), 'items', 'LEAD_TIME', 'lead_time_days', 'integer')`); err != nil {
		t.Fatal(err)
	}
	out, code := w.cli("catalog", "check")
	for _, want := range []string{"items -> schedulehub.items", "part_no", "business key", "lead_time_days", "rule LEAD_TIME (integer)", "deleted_at", "soft delete", "the catalog fits the database"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("check (%d) lacks %q:\n%s", code, want, out)
		}
	}
	out, code = w.cli("catalog", "check", builtInWith(t, routingsEntity))
	if code != 1 || !strings.Contains(out, "target table schedulehub.routings does not exist") {
		t.Errorf("check of a file whose table is missing (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.catalog_versions`); got != "1" {
		t.Errorf("check stored a version: %s", got)
	}
}

// A change that makes an entity's applied versions mean something else (here:
// its rowversion form) is refused while the ledger holds versions of it: every
// later update could be judged stale. --forget-versions clears them.
func TestCatalogApplyRefusesAReorderingChange(t *testing.T) {
	w := newWorld(t)
	if _, err := w.conn.Exec(w.ctx, `INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq)
		VALUES ('items', 'h1', '["P1"]', '20260101000000', 1767225600000000, 'realtime', 1)`); err != nil {
		t.Fatal(err)
	}
	shipped, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(shipped), "    key: [PART_NO]\n    rowversion: objversion", "    key: [PART_NO]\n    rowversion: number", 1)
	if changed == string(shipped) {
		t.Fatal("the shipped catalog's items block changed: adjust the test")
	}
	file := filepath.Join(t.TempDir(), "catalog.yaml")
	if err := os.WriteFile(file, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := w.cli("catalog", "apply", file)
	if code != 2 || !strings.Contains(out, `entity "items" changes its rowversion form`) || !strings.Contains(out, "--forget-versions items") {
		t.Errorf("a reordering change (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.catalog_versions`); got != "1" {
		t.Errorf("the refused catalog was stored: %s versions", got)
	}
	if out, code = w.cli("catalog", "apply", file, "--forget-versions", "items"); code != 0 || !strings.Contains(out, "forgot the applied versions of 1 items rows") {
		t.Errorf("with --forget-versions (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.synced_records WHERE entity_name = 'items'`); got != "0" {
		t.Errorf("%s items rows left in the ledger", got)
	}
}
