package store_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/store"
)

// deadLetters inserts dead letters: entity, stage, error message, age in hours.
func (f *fixture) deadLetters(rows ...[4]string) []uuid.UUID {
	f.t.Helper()
	var uids []uuid.UUID
	for _, r := range rows {
		uid := testUID()
		if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.failed_records (uid, entity_name, raw_bytes, stage_failed, error_message, created_at)
			VALUES ($1, $2, 'x', $3, $4, now() - ($5 || ' hours')::interval)`, uid, r[0], r[1], r[2], r[3]); err != nil {
			f.t.Fatal(err)
		}
		uids = append(uids, uid)
	}
	return uids
}

// Dead letters that differ only in their values share a fingerprint; a different
// cause, stage or entity does not.
func TestDeadLetterGroups(t *testing.T) {
	f := newFixture(t)
	f.deadLetters(
		[4]string{"items", "mapping", `mapping: field LEAD_TIME_DAYS -> lead_time_days (integer): "4.5" is not an integer`, "1"},
		[4]string{"items", "mapping", `mapping: field LEAD_TIME_DAYS -> lead_time_days (integer): "x" is not an integer`, "2"},
		[4]string{"items", "mapping", `mapping: field LEAD_TIME_DAYS -> lead_time_days (integer): "\"quoted\" 12" is not an integer`, "3"},
		[4]string{"items", "mapping", `mapping: required field UNIT_MEAS is missing`, "1"},
		[4]string{"work_orders", "orphan", `parent items ["P-1"] was never applied: the child waited since 2026-11-26T08:00:00Z and was re-checked 10 times`, "1"},
		[4]string{"work_orders", "orphan", `parent items ["P-22"] was never applied: the child waited since 2026-11-27T09:30:00Z and was re-checked 3 times`, "1"},
		[4]string{"work_orders", "write", `ERROR: value too long for type character varying(10) (SQLSTATE 22001) key 0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b`, "1"},
		[4]string{"work_orders", "write", `ERROR: value too long for type character varying(12) (SQLSTATE 22001) key 0193a1b2-c3d4-7e5f-8a9b-000000000000`, "1"},
		[4]string{"sites", "decode", `decode: entity "sites" in the body, but the subject says "items"`, "1"},
		[4]string{"sites", "normalization", `decode: entity "sites" in the body, but the subject says "items"`, "1"},
	)
	groups, total, err := f.st.DeadLetterGroups(f.ctx, store.DeadLetterFilter{Unresolved: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, g := range groups {
		got = append(got, g.Entity+"|"+g.Stage+"|"+string(rune('0'+g.Count))+"|"+g.Reason)
		if len(g.Fingerprint) != 12 || g.SampleUID == uuid.Nil || g.FirstSeen.After(g.LastSeen) {
			t.Errorf("group %+v", g)
		}
	}
	// The largest group first; then by the last one seen.
	want := []string{
		`items|mapping|3|mapping: field LEAD_TIME_DAYS -> lead_time_days (integer): ? is not an integer`,
		`work_orders|orphan|2|parent items [?] was never applied: the child waited since ? and was re-checked N times`,
		`work_orders|write|2|ERROR: value too long for type character varying(N) (SQLSTATE N) key ?`,
		`items|mapping|1|mapping: required field UNIT_MEAS is missing`,
		`sites|decode|1|decode: entity ? in the body, but the subject says ?`,
		`sites|normalization|1|decode: entity ? in the body, but the subject says ?`,
	}
	slices.Sort(got[1:3])
	slices.Sort(got[3:])
	slices.Sort(want[3:])
	if total != 6 || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%d groups:\n%s\nwant first\n%s", total, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A fingerprint chooses its group, and nothing else.
	uids, err := f.st.DeadLetterUIDs(f.ctx, store.DeadLetterFilter{Fingerprint: groups[0].Fingerprint})
	if err != nil || len(uids) != 3 {
		t.Errorf("by fingerprint: %v %v", uids, err)
	}
	orphans := groups[slices.IndexFunc(groups, func(g store.DeadLetterGroup) bool { return g.Stage == "orphan" })]
	if n, err := f.st.ResolveDeadLetters(f.ctx, store.DeadLetterFilter{Fingerprint: orphans.Fingerprint}, "parents cancelled"); err != nil || n != 2 {
		t.Errorf("resolve by fingerprint: %d %v", n, err)
	}
	if got := f.rows(`SELECT entity_name, stage_failed, count(*) FROM bridge.failed_records WHERE resolved_at IS NOT NULL AND resolution_note = 'parents cancelled' GROUP BY 1, 2`); got != "work_orders|orphan|2" {
		t.Errorf("resolved: %s", got)
	}
}

// Each filter chooses exactly what it says.
func TestDeadLetterFilters(t *testing.T) {
	f := newFixture(t)
	uids := f.deadLetters(
		[4]string{"items", "mapping", "Required field UNIT_MEAS is missing", "1"},
		[4]string{"items", "write", "value too long", "30"},
		[4]string{"sites", "mapping", "required field X is missing", "50"},
		[4]string{"suppliers", "decode", "unknown entity", "2"},
	)
	if _, err := f.conn.Exec(f.ctx, `UPDATE bridge.failed_records SET resolved_at = now() - interval '40 days' WHERE uid = $1`, uids[2]); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for name, c := range map[string]struct {
		f    store.DeadLetterFilter
		want []uuid.UUID
	}{
		"entity":          {store.DeadLetterFilter{Entity: "items"}, []uuid.UUID{uids[1], uids[0]}},
		"stage":           {store.DeadLetterFilter{Stage: "mapping"}, []uuid.UUID{uids[2], uids[0]}},
		"since":           {store.DeadLetterFilter{Since: now.Add(-3 * time.Hour)}, []uuid.UUID{uids[3], uids[0]}},
		"until":           {store.DeadLetterFilter{Until: now.Add(-3 * time.Hour)}, []uuid.UUID{uids[2], uids[1]}},
		"reason":          {store.DeadLetterFilter{Reason: "REQUIRED FIELD"}, []uuid.UUID{uids[2], uids[0]}},
		"outside catalog": {store.DeadLetterFilter{OutsideCatalog: []string{"items", "sites"}}, uids[3:]},
		"unresolved":      {store.DeadLetterFilter{Unresolved: true, Stage: "mapping"}, uids[:1]},
		"resolved before": {store.DeadLetterFilter{Resolved: true, ResolvedBefore: now.Add(-30 * 24 * time.Hour)}, uids[2:3]},
		"uids and entity": {store.DeadLetterFilter{UIDs: uids[1:3], Entity: "items"}, uids[1:2]},
	} {
		got, err := f.st.DeadLetterUIDs(f.ctx, c.f)
		if err != nil || len(got) != len(c.want) {
			t.Errorf("%s: %v %v, want %v", name, got, err, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("%s: %v, want %v", name, got, c.want)
				break
			}
		}
	}
	// A listing pages with its cursor and says how many there are in all.
	page, total, err := f.st.ListDeadLetters(f.ctx, store.DeadLetterFilter{Limit: 3})
	if err != nil || total != 4 || len(page) != 3 || page[0].UID != uids[0] {
		t.Fatalf("first page: %d of %d %v", len(page), total, err)
	}
	rest, total, err := f.st.ListDeadLetters(f.ctx, store.DeadLetterFilter{Limit: 3, After: page[2].UID})
	if err != nil || total != 4 || len(rest) != 1 || rest[0].UID != uids[2] {
		t.Fatalf("second page: %+v of %d %v", rest, total, err)
	}
	// Purge deletes resolved dead letters only, whatever else the filter says.
	if n, err := f.st.PurgeDeadLetters(f.ctx, store.DeadLetterFilter{Stage: "mapping"}); err != nil || n != 1 {
		t.Errorf("purge: %d %v", n, err)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records`); got != "3" {
		t.Errorf("left after purge: %s", got)
	}
}

func TestParkedFilters(t *testing.T) {
	f := newFixture(t)
	f.apply("work_orders", nil, woEvent("WO1", "2026-01-01T00:00:01Z", "one"), woEvent("WO2", "2026-01-01T00:00:01Z", "two"))
	f.apply("work_centers", nil, `{"entity":"work_centers","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S9","WORK_CENTER_NO":"WC1"}}`)
	if _, err := f.conn.Exec(f.ctx, `UPDATE bridge.pending_children SET created_at = now() - interval '3 days' WHERE child_entity = 'work_centers'`); err != nil {
		t.Fatal(err)
	}
	count := func(pf store.ParkedFilter) int {
		t.Helper()
		uids, err := f.st.ParkedUIDs(f.ctx, pf)
		if err != nil {
			t.Fatal(err)
		}
		return len(uids)
	}
	for name, c := range map[string]struct {
		f    store.ParkedFilter
		want int
	}{
		"all":        {store.ParkedFilter{}, 3},
		"entity":     {store.ParkedFilter{Entity: "work_centers"}, 1},
		"parent":     {store.ParkedFilter{Parent: "sites"}, 3},
		"parent key": {store.ParkedFilter{ParentKey: `"S9"`}, 1},
		"older than": {store.ParkedFilter{OlderThan: 48 * time.Hour}, 1},
		"since":      {store.ParkedFilter{Since: time.Now().Add(-time.Hour)}, 2},
	} {
		if got := count(c.f); got != c.want {
			t.Errorf("%s: %d, want %d", name, got, c.want)
		}
	}
	list, total, err := f.st.ListParked(f.ctx, store.ParkedFilter{Limit: 1})
	if err != nil || total != 3 || len(list) != 1 || list[0].Child != "work_centers" {
		t.Errorf("list: %+v of %d %v", list, total, err)
	}
}
