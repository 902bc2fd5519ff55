package store_test

import (
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/streams"
)

// An upsert merges by default: fields the event does not carry keep their target
// values. With upsert: replace, they go back to their defaults. Either way the
// demo target's synced_at moves on every write.
func TestUpsertMergeAndReplace(t *testing.T) {
	f := newFixture(t)
	full := `{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P1","DESCRIPTION":"bolt","UNIT_MEAS":"pcs","LEAD_TIME_DAYS":4}}`
	partial := `{"entity":"items","op":"upsert","rowversion":"20260101000100","data":{"PART_NO":"P1","DESCRIPTION":"bolt M8"}}`
	f.apply("items", nil, full)
	first := f.rows(`SELECT synced_at FROM schedulehub.items`)
	time.Sleep(10 * time.Millisecond)
	f.apply("items", nil, partial)
	if got := f.rows(`SELECT description, unit_meas, lead_time_days FROM schedulehub.items`); got != "bolt M8|pcs|4" {
		t.Errorf("merge: %s", got)
	}
	if f.rows(`SELECT synced_at FROM schedulehub.items`) == first {
		t.Errorf("synced_at did not move on an update")
	}

	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Parse([]byte(strings.Replace(string(data), "    delete: soft\n", "    delete: soft\n    upsert: replace\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := cat.Entity("items"); e.Upsert != catalog.UpsertReplace {
		t.Fatalf("the edited catalog does not replace items: %+v", e)
	}
	if err := f.st.PrepareTargets(f.ctx, cat); err != nil {
		t.Fatal(err)
	}
	f.cat = cat
	f.truncate()
	f.apply("items", nil, full)
	f.apply("items", nil, partial)
	if got := f.rows(`SELECT description, unit_meas, lead_time_days, deleted_at FROM schedulehub.items`); got != "bolt M8|<nil>|<nil>|<nil>" {
		t.Errorf("replace: %s", got)
	}
	if got := f.rows(`SELECT synced_at > now() - interval '1 minute' FROM schedulehub.items`); got != "true" {
		t.Errorf("replace reset synced_at to %s", f.rows(`SELECT synced_at FROM schedulehub.items`))
	}
}
