package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/backfill"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/storetest"
)

// memSource is an APISmith of items held in memory: keyset pages in key order
// (only the fields asked for), and lookups by key.
type memSource struct {
	mu      sync.Mutex
	rows    map[string]backfill.SourceRow // by PART_NO
	lookups atomic.Int64
}

func itemVersion(rv int) json.RawMessage {
	v := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rv) * time.Second).Format("20060102150405")
	return json.RawMessage(strconv.Quote(v))
}

func (m *memSource) put(part string, rv int, desc string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rows == nil {
		m.rows = map[string]backfill.SourceRow{}
	}
	m.rows[part] = backfill.SourceRow{RowVersion: itemVersion(rv), Data: map[string]any{"PART_NO": part, "DESCRIPTION": desc}}
}

func (m *memSource) drop(part string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.rows, part)
}

func (m *memSource) Count(context.Context, string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.rows)), nil
}

func (m *memSource) PageFields(_ context.Context, entity, cursor string, limit int, fields []string) ([]backfill.SourceRow, string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := slices.Sorted(maps.Keys(m.rows))
	i, _ := slices.BinarySearch(keys, cursor)
	if i < len(keys) && keys[i] == cursor {
		i++
	}
	var out []backfill.SourceRow
	for ; i < len(keys) && len(out) < limit; i++ {
		r := m.rows[keys[i]]
		data := map[string]any{}
		for _, f := range fields {
			data[f] = r.Data[f]
		}
		out = append(out, backfill.SourceRow{RowVersion: r.RowVersion, Data: data})
	}
	if i >= len(keys) || len(out) == 0 {
		return out, "", false, nil
	}
	return out, keys[i-1], true, nil
}

func (m *memSource) Lookup(_ context.Context, entity string, keys []map[string]any) ([]backfill.SourceRow, error) {
	m.lookups.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []backfill.SourceRow
	for _, k := range keys {
		if r, ok := m.rows[fmt.Sprint(k["PART_NO"])]; ok {
			out = append(out, backfill.SourceRow{RowVersion: r.RowVersion, Data: maps.Clone(r.Data)})
		}
	}
	return out, nil
}

// collector is a publisher that keeps what it was given.
type collector struct {
	mu   sync.Mutex
	msgs []backfill.Message
}

func (c *collector) PublishAll(_ context.Context, msgs []backfill.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, msgs...)
	return nil
}

// verifyFixture is a store with items synced from a source.
type verifyFixture struct {
	*fixture
	b   *pgBackend
	env *storetest.Env
	src *memSource
	pub *collector
	v   backfill.Verifier
}

func newVerifyFixture(t *testing.T, items int) *verifyFixture {
	f := newFixture(t)
	cat := f.cat
	b := &pgBackend{st: f.st, conn: f.conn, cat: cat}
	env := storetest.NewEnv(t, b, cat, storetest.Policy)
	vf := &verifyFixture{fixture: f, b: b, env: env, src: &memSource{}, pub: &collector{}}
	var bodies []string
	for i := range items {
		part := fmt.Sprintf("P%03d", i)
		vf.src.put(part, i, "item "+part)
		bodies = append(bodies, storetest.Item(part, i, "item "+part))
	}
	env.Apply(t, "items", bodies...)
	vf.v = backfill.Verifier{Store: f.st, Source: vf.src, Publisher: vf.pub, Catalog: cat, PageSize: 7, LookupSize: 3,
		Settle: time.Millisecond, Replica: "test"}
	return vf
}

func (vf *verifyFixture) verify(t *testing.T, opt backfill.VerifyOptions) backfill.VerifyResult {
	t.Helper()
	res, err := vf.v.Verify(vf.ctx, "items", opt)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// applyPublished applies what the verification published, as the backfill
// consumer would.
func (vf *verifyFixture) applyPublished(t *testing.T) {
	t.Helper()
	vf.env.Source = event.Backfill
	defer func() { vf.env.Source = event.Realtime }()
	var bodies []string
	for _, m := range vf.pub.msgs {
		bodies = append(bodies, string(m.Body))
	}
	vf.pub.msgs = nil
	if res := vf.env.Apply(t, "items", bodies...); res.Counts.Failed > 0 {
		t.Fatalf("repairs failed: %+v", res.Counts)
	}
}

func counts(c backfill.Comparison) map[backfill.DriftKind]int64 {
	out := map[backfill.DriftKind]int64{}
	for k, n := range c.Counts {
		if n != 0 {
			out[k] = n
		}
	}
	return out
}

// Every kind of drift, injected in known numbers into a synced entity, is
// counted exactly; a repair fixes it through the pipeline; a second verify is
// clean, and the target holds the source's rows.
func TestVerifyFindsAndRepairsEveryKindOfDrift(t *testing.T) {
	vf := newVerifyFixture(t, 40)
	if res := vf.verify(t, backfill.VerifyOptions{}); len(counts(res.Comparison)) != 0 || res.Comparison.SourceRows != 40 || res.Comparison.LedgerRows != 40 {
		t.Fatalf("a synced entity: %+v", res.Comparison)
	}
	// missing: in the source, never published (3).
	for _, p := range []string{"P900", "P901", "P902"} {
		vf.src.put(p, 900, "new "+p)
	}
	// stale: changed in the source, the event lost (2).
	vf.src.put("P003", 500, "changed")
	vf.src.put("P004", 500, "changed")
	// extra: deleted in the source silently (4).
	for _, p := range []string{"P010", "P011", "P012", "P013"} {
		vf.src.drop(p)
	}
	// target-edited (2) and target-missing (3), by hand in ScheduleHub.
	vf.b.exec(t, `UPDATE schedulehub.items SET description = 'edited by hand' WHERE part_no IN ('P020', 'P021')`)
	vf.b.exec(t, `DELETE FROM schedulehub.items WHERE part_no IN ('P030', 'P031', 'P032')`)
	// unhashed: written before the ledger kept target hashes (1).
	vf.b.exec(t, `UPDATE bridge.synced_records SET target_hash = NULL, target_key = NULL WHERE business_key = '["P035"]'`)
	// Not drift: the ledger holds a newer version than the source copy (the
	// source changed after it was read, and the event arrived).
	vf.env.Apply(t, "items", storetest.Item("P036", 700, "newer than the copy"))

	want := map[backfill.DriftKind]int64{backfill.Missing: 3, backfill.Stale: 2, backfill.Extra: 4, backfill.TargetEdited: 2,
		backfill.TargetMissing: 3, backfill.Unhashed: 1}
	res := vf.verify(t, backfill.VerifyOptions{Samples: 2, Record: true, Trigger: "cli"})
	if got := counts(res.Comparison); !maps.Equal(got, want) {
		t.Fatalf("counts = %v, want %v", got, want)
	}
	if !res.Drifted() {
		t.Fatal("drift not reported")
	}
	if got := res.Comparison.Samples[backfill.TargetMissing]; len(got) != 2 {
		t.Fatalf("samples of target-missing = %v, want 2", got)
	}

	// A dry run plans and publishes nothing.
	dry := vf.verify(t, backfill.VerifyOptions{Repair: true, DryRun: true, DeleteExtra: true})
	if len(vf.pub.msgs) != 0 || dry.Plan[backfill.Missing] != 3 || dry.Plan[backfill.Extra] != 4 || dry.Plan[backfill.TargetEdited] != 2 {
		t.Fatalf("dry run: published %d, plan %v", len(vf.pub.msgs), dry.Plan)
	}
	// Without --delete-extra the extra rows are reported, not deleted.
	rep := vf.verify(t, backfill.VerifyOptions{Repair: true})
	if rep.Published != 3+2+2+3+1 || len(vf.pub.msgs) != int(rep.Published) {
		t.Fatalf("repair published %d (%d messages), want 11", rep.Published, len(vf.pub.msgs))
	}
	vf.applyPublished(t)
	after := vf.verify(t, backfill.VerifyOptions{})
	if got := counts(after.Comparison); !maps.Equal(got, map[backfill.DriftKind]int64{backfill.Extra: 4}) {
		t.Fatalf("after the repair without --delete-extra: %v", got)
	}
	rep = vf.verify(t, backfill.VerifyOptions{Repair: true, DeleteExtra: true})
	if rep.Published != 4 {
		t.Fatalf("deleting the extra rows published %d, want 4", rep.Published)
	}
	vf.applyPublished(t)
	// The deletes are dated just after the version they delete, not at the
	// verification's time: the checkpoints follow the rowversions applied.
	var tombstones int
	var newest time.Time
	if err := vf.conn.QueryRow(vf.ctx, `SELECT count(*), max(to_timestamp(rowversion_ord / 1e6)) FROM bridge.synced_records
		WHERE entity_name = 'items' AND deleted`).Scan(&tombstones, &newest); err != nil {
		t.Fatal(err)
	}
	if tombstones != 4 || newest.After(time.Date(2026, 1, 1, 0, 1, 0, 0, time.UTC)) {
		t.Fatalf("%d tombstones, the newest dated %v", tombstones, newest)
	}
	if final := vf.verify(t, backfill.VerifyOptions{}); len(counts(final.Comparison)) != 0 || final.Drifted() {
		t.Fatalf("after the repairs: %v", counts(final.Comparison))
	}
	// The target holds what the source holds (P036 is ahead of its copy).
	got := map[string]string{}
	rows := vf.b.query(t, `SELECT part_no, description FROM schedulehub.items WHERE deleted_at IS NULL`)
	for rows.Next() {
		var p, d string
		if err := rows.Scan(&p, &d); err != nil {
			t.Fatal(err)
		}
		got[p] = d
	}
	vf.src.mu.Lock()
	defer vf.src.mu.Unlock()
	if len(got) != len(vf.src.rows) {
		t.Fatalf("target rows %d, source rows %d", len(got), len(vf.src.rows))
	}
	for p, r := range vf.src.rows {
		if want := r.Data["DESCRIPTION"]; p != "P036" && got[p] != want {
			t.Errorf("%s: target %q, source %q", p, got[p], want)
		}
	}
	// The verification was recorded.
	var recorded, drifted int64
	if err := vf.conn.QueryRow(vf.ctx, `SELECT count(*), count(*) FILTER (WHERE missing = 3 AND stale = 2 AND extra = 4 AND target_edited = 2
		AND target_missing = 3 AND unhashed = 1 AND trigger = 'cli') FROM bridge.verifications`).Scan(&recorded, &drifted); err != nil {
		t.Fatal(err)
	}
	if recorded != 1 || drifted != 1 {
		t.Fatalf("verifications recorded %d, with the counts %d", recorded, drifted)
	}
}

// A repair copy at the version the ledger holds rewrites the target; the same
// copy without the mark is unchanged (the ledger calls it applied).
func TestRepairMarkRewritesTheTarget(t *testing.T) {
	vf := newVerifyFixture(t, 3)
	vf.b.exec(t, `UPDATE schedulehub.items SET description = 'edited by hand' WHERE part_no = 'P001'`)
	vf.env.Source = event.Backfill
	plain := storetest.Item("P001", 1, "item P001")
	if res := vf.env.Apply(t, "items", plain); res.Counts.Updated != 0 {
		t.Fatalf("an unmarked copy wrote the target: %+v", res.Counts)
	}
	marked := plain[:len(plain)-1] + `,"repair":true}`
	if res := vf.env.Apply(t, "items", marked); res.Counts.Updated != 1 {
		t.Fatalf("a marked copy did not rewrite the target: %+v", res.Counts)
	}
	var desc string
	if err := vf.conn.QueryRow(vf.ctx, `SELECT description FROM schedulehub.items WHERE part_no = 'P001'`).Scan(&desc); err != nil || desc != "item P001" {
		t.Fatalf("description %q, %v", desc, err)
	}
	// Two changes in one second: the later realtime event holds the rowversion.
	// A marked copy of the earlier payload at that rowversion is not the
	// ledger's version: it is stale, the target keeps the later change.
	vf.env.Source = event.Realtime
	vf.env.Apply(t, "items", storetest.Item("P000", 0, "second change"))
	vf.env.Source = event.Backfill
	earlier := storetest.Item("P000", 0, "item P000")
	if res := vf.env.Apply(t, "items", earlier[:len(earlier)-1]+`,"repair":true}`); res.Counts.Stale != 1 || res.Counts.Updated != 0 {
		t.Fatalf("a marked copy of another payload at the ledger's rowversion: %+v", res.Counts)
	}
	if err := vf.conn.QueryRow(vf.ctx, `SELECT description FROM schedulehub.items WHERE part_no = 'P000'`).Scan(&desc); err != nil || desc != "second change" {
		t.Fatalf("description %q, %v", desc, err)
	}
	// A marked copy older than the ledger's version is stale: never written.
	vf.env.Apply(t, "items", storetest.Item("P002", 50, "newer"))
	old := storetest.Item("P002", 2, "older")
	if res := vf.env.Apply(t, "items", old[:len(old)-1]+`,"repair":true}`); res.Counts.Stale != 1 {
		t.Fatalf("an older marked copy: %+v", res.Counts)
	}
}

// Two verifications of one entity at once (two operators, or a verify night
// and a CLI run) do not see each other's keys.
func TestConcurrentVerificationsAreIndependent(t *testing.T) {
	vf := newVerifyFixture(t, 30)
	vf.src.drop("P007")
	var wg sync.WaitGroup
	results := make([]backfill.VerifyResult, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = vf.v.Verify(vf.ctx, "items", backfill.VerifyOptions{})
		}()
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got := counts(results[i].Comparison); !maps.Equal(got, map[backfill.DriftKind]int64{backfill.Extra: 1}) || results[i].Comparison.SourceRows != 29 {
			t.Fatalf("verification %d: %v, %d source rows", i, got, results[i].Comparison.SourceRows)
		}
	}
}

// A row the scan missed because it was created in the source after the scan
// passed its key, and applied meanwhile, is not extra: it is looked up again.
func TestExtraRowsAreLookedUpAgain(t *testing.T) {
	vf := newVerifyFixture(t, 5)
	vf.src.drop("P004")
	lookups := vf.src.lookups.Load()
	vf.v.Source = &lateSource{memSource: vf.src, after: func() { vf.src.put("P004", 4, "item P004") }}
	res := vf.verify(t, backfill.VerifyOptions{})
	if len(counts(res.Comparison)) != 0 {
		t.Fatalf("a row created during the scan counted: %v", counts(res.Comparison))
	}
	if vf.src.lookups.Load() == lookups {
		t.Fatal("the extra key was not looked up again")
	}
}

// lateSource runs after once the scan has read its last page.
type lateSource struct {
	*memSource
	after func()
	once  sync.Once
}

func (l *lateSource) PageFields(ctx context.Context, entity, cursor string, limit int, fields []string) ([]backfill.SourceRow, string, bool, error) {
	rows, next, more, err := l.memSource.PageFields(ctx, entity, cursor, limit, fields)
	if !more {
		l.once.Do(l.after)
	}
	return rows, next, more, err
}

// A row live in the source and deleted in the ledger is missing at any
// version: a tombstone newer than the source's row (a delete of a row the
// source only seemed to lack) must not hide it. One deleted in the source since
// it was read is not.
func TestTombstoneOverALiveSourceRowIsMissing(t *testing.T) {
	vf := newVerifyFixture(t, 6)
	vf.env.Apply(t, "items", `{"entity":"items","op":"delete","rowversion":"20260101000100","data":{"PART_NO":"P001"}}`,
		`{"entity":"items","op":"delete","rowversion":"20260101000100","data":{"PART_NO":"P002"}}`)
	// P002 is deleted in the source once the scan has read it.
	vf.v.Source = &lateSource{memSource: vf.src, after: func() { vf.src.drop("P002") }}
	res := vf.verify(t, backfill.VerifyOptions{Samples: 5})
	if got := counts(res.Comparison); !maps.Equal(got, map[backfill.DriftKind]int64{backfill.Missing: 1}) ||
		fmt.Sprint(res.Comparison.Samples[backfill.Missing]) != "[[P001]]" {
		t.Fatalf("a tombstone over a live source row: %v %v", got, res.Comparison.Samples)
	}
}

// A source row whose key or rowversion cannot be read is counted, with the
// reason, and the rest of the entity is compared.
func TestUnreadableSourceRowsAreCounted(t *testing.T) {
	vf := newVerifyFixture(t, 5)
	vf.src.mu.Lock()
	vf.src.rows["P900"] = backfill.SourceRow{RowVersion: json.RawMessage(`"yesterday"`), Data: map[string]any{"PART_NO": "P900"}}
	vf.src.rows["P901"] = backfill.SourceRow{RowVersion: itemVersion(1), Data: map[string]any{"PART_NO": "P9\x0001"}}
	vf.src.mu.Unlock()
	vf.src.drop("P003")
	res := vf.verify(t, backfill.VerifyOptions{})
	if got := counts(res.Comparison); !maps.Equal(got, map[backfill.DriftKind]int64{backfill.Unreadable: 2, backfill.Extra: 1}) {
		t.Fatalf("counts %v", got)
	}
	if s := fmt.Sprint(res.Comparison.Samples[backfill.Unreadable]); !strings.Contains(s, "14-digit") || !strings.Contains(s, "NUL") {
		t.Errorf("the reasons: %s", s)
	}
}

// A source whose cursor cycles would page forever: the scan stops at twice the
// rows the source counts.
func TestACyclingCursorStopsTheScan(t *testing.T) {
	vf := newVerifyFixture(t, 3)
	vf.v.Source = cycling{vf.src}
	_, err := vf.v.Verify(vf.ctx, "items", backfill.VerifyOptions{})
	if err == nil || !strings.Contains(err.Error(), "does its cursor cycle?") {
		t.Fatalf("a cycling cursor: %v", err)
	}
}

// cycling answers every page with the first rows and a cursor that alternates.
type cycling struct{ *memSource }

func (c cycling) PageFields(ctx context.Context, entity, cursor string, limit int, fields []string) ([]backfill.SourceRow, string, bool, error) {
	rows, _, _, err := c.memSource.PageFields(ctx, entity, "", limit, fields)
	next := "A"
	if cursor == "A" {
		next = "B"
	}
	return rows, next, true, err
}
