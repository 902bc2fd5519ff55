package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mappings import checks every rule against the live target table, accepts
// Excel's CSV, and its --dry-run (with --replace too) writes nothing.
func TestMappingsImportChecksTheTargets(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	header := "entity_name,source_field,target_field,transformation,default_value,is_required\n"
	count := func() string { return w.query(`SELECT count(*) FROM bridge.field_mappings`) }
	for _, tc := range []struct{ body, want string }{
		{"items,UNIT_MEAS,unit_mesa,trim,,false\n", "rule 1 (items UNIT_MEAS -> unit_mesa): schedulehub.items has no column unit_mesa (did you mean unit_meas?)"},
		{"items,LEAD_TIME_DAYS,lead_time_days,integer,notanint,false\n", `default_value "notanint" does not pass integer`},
		{"items,LEAD_TIME_DAYS,lead_time_days,boolean,,false\n", "column lead_time_days is integer, which cannot take the true/false values"},
	} {
		out, code := w.cli("mappings", "import", file("bad.csv", header+tc.body))
		if code != 1 || !strings.Contains(out, tc.want) || !strings.Contains(out, "nothing was imported") || count() != "0" {
			t.Errorf("%s(%d): %s", tc.body, code, out)
		}
	}
	// Excel's "CSV UTF-8" starts with a byte order mark.
	excel := file("excel.csv", "\uFEFF"+header+"items,UNIT_MEAS,unit_meas,trim|lowercase,,false\nitems,DESCRIPTION,description,trim,,false\n")
	if out, code := w.cli("mappings", "import", excel); code != 0 || count() != "2" {
		t.Fatalf("a CSV with a byte order mark (%d): %s", code, out)
	}
	snapshot := w.query(`SELECT string_agg(entity_name || source_field || target_field || transformation, ',' ORDER BY 1) FROM bridge.field_mappings`)
	only := file("only.csv", header+"items,UNIT_MEAS,unit_meas,trim,,false\n")
	out, code := w.cli("mappings", "import", only, "--replace", "--dry-run")
	if code != 0 || !strings.Contains(out, "would import 1 rules") || !strings.Contains(out, "removed: items DESCRIPTION -> description (trim)") ||
		!strings.Contains(out, "changed: items UNIT_MEAS -> unit_meas (trim), was items UNIT_MEAS -> unit_meas (trim|lowercase)") || !strings.Contains(out, "dry run") {
		t.Errorf("--replace --dry-run (%d): %s", code, out)
	}
	if got := w.query(`SELECT string_agg(entity_name || source_field || target_field || transformation, ',' ORDER BY 1) FROM bridge.field_mappings`); got != snapshot {
		t.Errorf("the dry run changed the rules: %s -> %s", snapshot, got)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"mappings", "list", "--entity", "nope"}, 3, `entity "nope" is not in the catalog`},
		{[]string{"mappings", "export", "--entity", "nope"}, 3, `entity "nope" is not in the catalog`},
		{[]string{"mappings", "export", "--format", "xml"}, 2, "--format is csv or json"},
		{[]string{"mappings", "import", only, "--format", "xml"}, 2, "pass --format csv|json"},
		{[]string{"mappings", "list", "--entity", "items"}, 0, "UNIT_MEAS"},
	} {
		if out, code := w.cli(tc.args...); code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%v (%d): %s", tc.args, code, out)
		}
	}
}
