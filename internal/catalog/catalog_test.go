package catalog

import (
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/streams"
)

// shippedCatalog parses the built-in catalog.
func shippedCatalog(t *testing.T) *Catalog {
	t.Helper()
	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestShippedCatalog(t *testing.T) {
	c := shippedCatalog(t)
	want := []string{"items", "sites", "work_centers", "work_orders", "work_order_operations"}
	if got := c.Names(); !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want parents first: %v", got, want)
	}
	ops, _ := c.Entity("work_order_operations")
	if len(ops.Parents) != 2 || ops.Parents[0].Entity != "work_orders" || !slices.Equal(ops.Parents[1].Fields, []string{"CONTRACT", "WORK_CENTER_NO"}) {
		t.Errorf("work_order_operations parents = %+v", ops.Parents)
	}
	items, _ := c.Entity("items")
	if items.Delete != DeleteSoft || items.SoftDeleteColumn != "deleted_at" || items.RowVersion != event.VersionObjversion {
		t.Errorf("items = %+v", items)
	}
	if got := c.Children("sites"); len(got) != 2 || got[0].Name != "work_centers" || got[1].Name != "work_orders" {
		t.Errorf("Children(sites) = %v", got)
	}
	if c.SourceSystem != "oracle_ifs" {
		t.Errorf("SourceSystem = %q", c.SourceSystem)
	}
}

const valid = `
entities:
  sites:
    key: [contract]
    target: {table: schedulehub.sites, key: [contract]}
  work_centers:
    key: [CONTRACT, WORK_CENTER_NO]
    parents: [{entity: sites, fields: [CONTRACT]}]
    target: {table: schedulehub.work_centers, key: [contract, work_center_no]}
`

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // every substring must be in the error
	}{
		{"unknown parent", strings.Replace(valid, "entity: sites", "entity: plants", 1),
			[]string{`entity "work_centers"`, `unknown parent entity "plants"`}},
		{"cycle", `
entities:
  a: {key: [K], parents: [{entity: b, fields: [K]}], target: {table: s.a, key: [k]}}
  b: {key: [K], parents: [{entity: a, fields: [K]}], target: {table: s.b, key: [k]}}
`, []string{`entity "a"`, "cycle", "a -> b -> a"}},
		{"self parent", `
entities:
  a: {key: [K], parents: [{entity: a, fields: [K]}], target: {table: s.a, key: [k]}}
`, []string{`entity "a"`, "itself"}},
		{"missing key", `
entities:
  a: {target: {table: s.a, key: []}}
`, []string{`entity "a"`, "at least one business-key field"}},
		{"parent fields do not match parent key", strings.Replace(valid, "fields: [CONTRACT]", "fields: [CONTRACT, X]", 1),
			[]string{`entity "work_centers"`, `"sites" has a 1-field key but 2 fields`}},
		{"bad table identifier", strings.Replace(valid, "schedulehub.sites", `schedulehub."sites; drop table x"`, 1),
			[]string{`entity "sites"`, "target.table"}},
		{"table without schema", strings.Replace(valid, "schedulehub.sites", "sites", 1),
			[]string{`entity "sites"`, "schema.table"}},
		{"bridge schema refused", strings.Replace(valid, "schedulehub.sites", "bridge.sites", 1),
			[]string{`entity "sites"`, "bridge schema"}},
		{"bad key column", strings.Replace(valid, "key: [contract]}", "key: [Contract-No]}", 1),
			[]string{`entity "sites"`, `"Contract-No" is not a lower-case SQL identifier`}},
		{"target key count", strings.Replace(valid, "key: [contract, work_center_no]", "key: [contract]", 1),
			[]string{`entity "work_centers"`, "1 columns for 2 business-key fields"}},
		{"bad entity name", strings.Replace(valid, "  sites:", "  Sites.X:", 1) + "", []string{`entity "Sites.X"`}},
		{"bad rowversion", strings.Replace(valid, "key: [contract]\n", "key: [contract]\n    rowversion: hourly\n", 1),
			[]string{`entity "sites"`, `rowversion: "hourly"`}},
		{"soft delete without column", strings.Replace(valid, "key: [contract]\n", "key: [contract]\n    delete: soft\n", 1),
			[]string{`entity "sites"`, "soft_delete_column"}},
		{"unknown field", strings.Replace(valid, "key: [contract]\n", "key: [contract]\n    keys: [x]\n", 1),
			[]string{`entity "sites": unknown setting keys (did you mean key?)`}},
		{"empty", "entities: {}", []string{"no entities"}},
		{"bad source time zone", "source_time_zone: Mars/Olympus\n" + valid, []string{"source_time_zone", `"Mars/Olympus" is not a time zone`}},
		{"bad entity time zone", strings.Replace(valid, "key: [contract]\n", "key: [contract]\n    time_zone: CEST\n", 1),
			[]string{`entity "sites"`, `time_zone: "CEST" is not a time zone`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatal("Parse accepted an invalid catalog")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	if _, err := Parse([]byte(valid)); err != nil {
		t.Fatalf("the base of these cases must be valid: %v", err)
	}
}

// Objversions are read in the catalog's source time zone, or an entity's own.
func TestTimeZones(t *testing.T) {
	c, err := Parse([]byte("source_time_zone: Europe/Stockholm\n" + strings.Replace(valid, "key: [contract]\n", "key: [contract]\n    time_zone: UTC\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	sites, _ := c.Entity("sites")
	centers, _ := c.Entity("work_centers")
	if sites.TimeZone.String() != "UTC" || centers.TimeZone.String() != "Europe/Stockholm" || c.SourceTimeZone.String() != "Europe/Stockholm" {
		t.Errorf("zones: sites %s, work_centers %s, catalog %s", sites.TimeZone, centers.TimeZone, c.SourceTimeZone)
	}
	c, _ = Parse([]byte(valid))
	if sites, _ := c.Entity("sites"); sites.TimeZone != time.UTC {
		t.Errorf("default zone %s, want UTC", sites.TimeZone)
	}
}

// Every problem is reported at once, not only the first.
func TestParseReportsAll(t *testing.T) {
	y := strings.Replace(strings.Replace(valid, "entity: sites", "entity: plants", 1), "schedulehub.sites", "nodot", 1)
	_, err := Parse([]byte(y))
	if err == nil || !strings.Contains(err.Error(), "plants") || !strings.Contains(err.Error(), "nodot") {
		t.Fatalf("err = %v, want both problems", err)
	}
}

// Mistakes in the file's shape are reported by line, in the catalog's terms.
func TestParseShapeErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"misspelled setting", strings.Replace(valid, "key: [contract]\n", "key: [contract]\n    rowvresion: timestamp\n", 1),
			[]string{`catalog line 5: entity "sites": unknown setting rowvresion (did you mean rowversion?)`, "the settings here are consumers, delete, key, parents, rowversion, soft_delete_column, target, time_zone, upsert"}},
		{"misspelled top level", strings.Replace(valid, "entities:", "entites:", 1),
			[]string{"catalog line 2: unknown setting entites (did you mean entities?)"}},
		{"key not a list", strings.Replace(valid, "key: [contract]\n", "key: contract\n", 1),
			[]string{`catalog line 4: entity "sites": key: must be a list of field names, e.g. [ORDER_NO, CONTRACT]`}},
		{"parents not a list", strings.Replace(valid, "parents: [{entity: sites, fields: [CONTRACT]}]", "parents: sites", 1),
			[]string{`entity "work_centers": parents: must be a list of parents, e.g. [{entity: sites, fields: [CONTRACT]}]`}},
		{"parent setting", strings.Replace(valid, "fields: [CONTRACT]", "feilds: [CONTRACT]", 1),
			[]string{`entity "work_centers": parents[1]: unknown setting feilds (did you mean fields?)`}},
		{"target setting", strings.Replace(valid, "{table: schedulehub.sites", "{tabel: schedulehub.sites", 1),
			[]string{`entity "sites": target: unknown setting tabel (did you mean table?)`}},
		{"not YAML", "entities: [", []string{"catalog: not valid YAML"}},
		{"upsert mode", strings.Replace(valid, "key: [contract]\n", "key: [contract]\n    upsert: overwrite\n", 1),
			[]string{`entity "sites": upsert: "overwrite" is not one of merge, replace`}},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v\nwant %q", tc.name, err, w)
			}
		}
		if strings.Contains(err.Error(), "catalog.") || strings.Contains(err.Error(), "[]string") || strings.Contains(err.Error(), "!!") {
			t.Errorf("%s: the error speaks of Go or YAML types: %v", tc.name, err)
		}
	}
	c, err := Parse([]byte(strings.Replace(valid, "key: [contract]\n", "key: [contract]\n    upsert: replace\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := c.Entity("sites"); s.Upsert != UpsertReplace {
		t.Errorf("upsert: %q", s.Upsert)
	}
	if w, _ := c.Entity("work_centers"); w.Upsert != UpsertMerge {
		t.Errorf("default upsert: %q", w.Upsert)
	}
}

// A name that is not an entity is explained with the entity it is nearest to,
// when one is near, and the list of entities.
func TestUnknownEntity(t *testing.T) {
	cat := shippedCatalog(t)
	for name, want := range map[string]string{
		"site":       `entity "site" is not in the catalog (did you mean sites?); its entities: items, sites, work_centers, work_orders, work_order_operations`,
		"Items":      `entity "Items" is not in the catalog (did you mean items?); its entities: `,
		"work_order": `(did you mean work_orders?)`,
		"plants":     `entity "plants" is not in the catalog; its entities: items,`,
		"":           `entity "" is not in the catalog; its entities: items,`,
	} {
		if got := cat.Unknown(name); !strings.Contains(got, want) {
			t.Errorf("Unknown(%q) = %s, want it to hold %s", name, got, want)
		}
	}
}
