package store_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/storetest"
	"github.com/syncflow/syncflow/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.MainTemplate(m, "store")) }

func testUID() uuid.UUID { return uuid.Must(uuid.NewV7()) }

type fixture struct {
	t     *testing.T
	ctx   context.Context
	st    *store.Store
	ap    *apply.Applier
	dl    *deadletter.DeadLetters
	cat   *catalog.Catalog
	conn  *pgx.Conn
	url   string // the test's own database
	batch uuid.UUID
	seq   uint64
	fresh bool
}

// fixtureConfig is what a test may tune of its fixture.
type fixtureConfig struct {
	Store       store.Config
	DeadLetters deadletter.Config
}

// newFixture gives t a database of its own and runs it in parallel with the
// package's other tests.
func newFixture(t *testing.T, tune ...func(*fixtureConfig)) *fixture {
	t.Helper()
	t.Parallel()
	ctx := context.Background()
	dbURL := testenv.DB(t)
	cfg := fixtureConfig{Store: store.Config{URL: dbURL}}
	for _, f := range tune {
		f(&cfg)
	}
	st, err := store.Open(ctx, cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	cat, _ := testenv.Shipped(t)
	if err := st.PrepareTargets(ctx, cat); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	ap, err := apply.NewApplier(st, cfg.DeadLetters.Stamp(apply.Config{IsolationTimeout: cfg.Store.StatementTimeout}))
	if err != nil {
		t.Fatal(err)
	}
	dl, err := deadletter.New(store.DeadLetters{Store: st}, ap, cfg.DeadLetters)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, ctx: ctx, st: st, ap: ap, dl: dl, cat: cat, conn: conn, url: dbURL}
	f.truncate()
	return f
}

// truncate empties the tables, for a test that runs several cases in its database.
func (f *fixture) truncate() {
	f.t.Helper()
	if _, err := f.conn.Exec(f.ctx, `TRUNCATE bridge.sync_batches, bridge.synced_records, bridge.failed_records, bridge.erp_sync_state,
		schedulehub.sites, schedulehub.items, schedulehub.work_orders, schedulehub.work_centers, schedulehub.work_order_operations CASCADE`); err != nil {
		f.t.Fatal(err)
	}
	f.batch, f.fresh = testUID(), true
}

// apply runs bodies through the pipeline and the store as one batch of entity.
func (f *fixture) apply(entity string, rules *mapping.Set, bodies ...string) apply.Result {
	f.t.Helper()
	res, err := f.tryApply(entity, rules, bodies...)
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

// tryApply is apply that returns the batch's error instead of failing t.
func (f *fixture) tryApply(entity string, rules *mapping.Set, bodies ...string) (apply.Result, error) {
	f.t.Helper()
	ds := make([]pipeline.Delivery, len(bodies))
	for i, b := range bodies {
		f.seq++
		ds[i] = pipeline.Delivery{Subject: "apismith.cdc." + entity, Source: event.Realtime, StreamSeq: f.seq, Data: []byte(b)}
	}
	e, _ := f.cat.Entity(entity)
	prepared := pipeline.Preparer{Catalog: f.cat, Rules: rules}.Prepare(ds)
	res, err := f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, Rules: rules, BatchUID: f.batch, NewBatch: f.fresh, Source: event.Realtime, Replica: "test", Deliveries: ds, Prepared: prepared})
	if err != nil {
		return res, err
	}
	f.fresh = false
	return res, f.st.FlushCheckpoints(f.ctx)
}

func (f *fixture) rows(sql string) string {
	f.t.Helper()
	return testenv.Rows(f.t, f.conn, sql)
}

// applyParents applies site S1 and item P1, the parents of the test work orders.
func (f *fixture) applyParents() {
	f.t.Helper()
	f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:00Z", "site"))
	f.apply("items", nil, `{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P1"}}`)
}

func siteEvent(op, contract, rv, desc string) string {
	return fmt.Sprintf(`{"entity":"sites","op":%q,"rowversion":%q,"data":{"CONTRACT":%q,"DESCRIPTION":%q}}`, op, rv, contract, desc)
}

func TestApplyBatchOrdering(t *testing.T) {
	f := newFixture(t)
	res := f.apply("sites", nil,
		siteEvent("upsert", "S1", "2026-01-01T00:00:01Z", "one"),
		siteEvent("upsert", "S2", "2026-01-01T00:00:01Z", "two"),
		siteEvent("upsert", "S1", "2026-01-01T00:00:02Z", "one v2"), // collapses over the first
	)
	if c := res.Counts; c.Inserted != 2 || c.Stale != 1 || c.Fetched != 3 {
		t.Fatalf("counts %+v", c)
	}
	if got, want := f.rows(`SELECT contract, description FROM schedulehub.sites ORDER BY 1`), "S1|one v2\nS2|two"; got != want {
		t.Fatalf("target:\n%s\nwant\n%s", got, want)
	}
	res = f.apply("sites", nil,
		siteEvent("upsert", "S1", "2026-01-01T00:00:01Z", "old"),   // stale
		siteEvent("upsert", "S2", "2026-01-01T00:00:05Z", "two"),   // newer, same payload
		siteEvent("delete", "S1", "2026-01-01T00:00:03Z", ""),      // delete
		siteEvent("upsert", "S3", "2026-01-01T00:00:09Z", "three"), // insert
	)
	if c := res.Counts; c.Stale != 1 || c.Unchanged != 1 || c.Deleted != 1 || c.Inserted != 1 {
		t.Fatalf("counts %+v", c)
	}
	// A stale upsert after the delete does not resurrect S1.
	res = f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:02Z", "zombie"))
	if res.Counts.Stale != 1 {
		t.Fatalf("counts %+v", res.Counts)
	}
	if got, want := f.rows(`SELECT contract, description FROM schedulehub.sites ORDER BY 1`), "S2|two\nS3|three"; got != want {
		t.Fatalf("target:\n%s\nwant\n%s", got, want)
	}
	if got, want := f.rows(`SELECT business_key::text, rowversion, deleted FROM bridge.synced_records ORDER BY 1`),
		`["S1"]|2026-01-01T00:00:03Z|true`+"\n"+`["S2"]|2026-01-01T00:00:05Z|false`+"\n"+`["S3"]|2026-01-01T00:00:09Z|false`; got != want {
		t.Fatalf("ledger:\n%s\nwant\n%s", got, want)
	}
	if got, want := f.rows(`SELECT entity_name, source_system, last_sync_rowversion FROM bridge.erp_sync_state`), "sites|oracle_ifs|2026-01-01T00:00:09Z"; got != want {
		t.Fatalf("checkpoint %s, want %s", got, want)
	}
	// The checkpoint never goes back.
	f.apply("sites", nil, siteEvent("upsert", "S4", "2025-01-01T00:00:00Z", "early"))
	if got, want := f.rows(`SELECT last_sync_rowversion FROM bridge.erp_sync_state`), "2026-01-01T00:00:09Z"; got != want {
		t.Fatalf("checkpoint %s, want %s", got, want)
	}
	if got, want := f.rows(`SELECT rows_fetched, rows_inserted, rows_updated, rows_unchanged, rows_stale, rows_deleted, rows_failed, status FROM bridge.sync_batches`),
		"9|4|0|1|3|1|0|running"; got != want {
		t.Fatalf("batch %s, want %s", got, want)
	}
}

func TestApplyBatchIsolatesRejectedRows(t *testing.T) {
	f := newFixture(t)
	f.applyParents()
	var bodies []string
	for i := range 1000 {
		lot := "5"
		if i == 437 {
			lot = "-1" // violates the target's CHECK (lot_size > 0)
		}
		bodies = append(bodies, fmt.Sprintf(`{"entity":"work_orders","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"ORDER_NO":"WO-%04d","CONTRACT":"S1","PART_NO":"P1","LOT_SIZE":%s}}`, i, lot))
	}
	res := f.apply("work_orders", nil, bodies...)
	if res.Counts.Inserted != 999 || res.Counts.Failed != 1 || res.Outcomes[437] != pipeline.Failed {
		t.Fatalf("counts %+v outcome[437]=%s", res.Counts, res.Outcomes[437])
	}
	if got := f.rows(`SELECT count(*) FROM schedulehub.work_orders`); got != "999" {
		t.Fatalf("target has %s rows, want 999", got)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.synced_records WHERE entity_name = 'work_orders'`); got != "999" {
		t.Fatalf("ledger has %s rows, want 999 (the rejected row has none)", got)
	}
	got := f.rows(`SELECT stage_failed, stream_seq, normalized_data->>'ORDER_NO', convert_from(raw_bytes, 'UTF8') = raw_data::text OR raw_data IS NOT NULL, error_message LIKE '%lot_size%' FROM bridge.failed_records`)
	if got != "write|440|WO-0437|true|true" {
		t.Fatalf("dead letter: %s", got)
	}
	var raw []byte
	if err := f.conn.QueryRow(f.ctx, `SELECT raw_bytes FROM bridge.failed_records`).Scan(&raw); err != nil || string(raw) != bodies[437] {
		t.Fatalf("raw bytes %q, want %q (%v)", raw, bodies[437], err)
	}
}

func TestApplyBatchDeadLettersEveryStage(t *testing.T) {
	f := newFixture(t)
	rules, err := mapping.Compile([]mapping.Rule{{Entity: "items", SourceField: "LEAD_TIME_DAYS", TargetField: "lead_time_days", Transformation: "integer"}})
	if err != nil {
		t.Fatal(err)
	}
	res := f.apply("items", rules,
		"{\"not json\x00",
		`{"entity":"items","op":"upsert","rowversion":"soon","data":{"PART_NO":"P1"}}`,
		`{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P2","LEAD_TIME_DAYS":"four"}}`,
		`{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P3","LEAD_TIME_DAYS":"4","DESCRIPTION":"ok \u0000"}}`,
		`{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P4","LEAD_TIME_DAYS":4}}`,
	)
	if res.Counts.Failed != 4 || res.Counts.Inserted != 1 {
		t.Fatalf("counts %+v", res.Counts)
	}
	got := f.rows(`SELECT stage_failed, stream_seq, raw_data IS NOT NULL, normalized_data IS NOT NULL FROM bridge.failed_records ORDER BY stream_seq`)
	want := "decode|1|false|false\nnormalization|2|true|false\nmapping|3|true|true\nwrite|4|false|false"
	if got != want {
		t.Fatalf("dead letters:\n%s\nwant\n%s", got, want)
	}
	if got := f.rows(`SELECT part_no, lead_time_days, deleted_at IS NULL FROM schedulehub.items`); got != "P4|4|true" {
		t.Fatalf("target %s", got)
	}
	// Soft delete marks the row; a newer upsert clears the mark.
	f.apply("items", rules, `{"entity":"items","op":"delete","rowversion":"20260102000000","data":{"PART_NO":"P4"}}`)
	if got := f.rows(`SELECT part_no, deleted_at IS NOT NULL FROM schedulehub.items`); got != "P4|true" {
		t.Fatalf("after soft delete %s", got)
	}
	f.apply("items", rules, `{"entity":"items","op":"upsert","rowversion":"20260103000000","data":{"PART_NO":"P4","LEAD_TIME_DAYS":5}}`)
	if got := f.rows(`SELECT part_no, lead_time_days, deleted_at IS NULL FROM schedulehub.items`); got != "P4|5|true" {
		t.Fatalf("after resurrection %s", got)
	}
}

func TestPrepareTargetsExplains(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := store.Open(ctx, store.Config{URL: testenv.DB(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cat, err := catalog.Parse([]byte(`
entities:
  a: {key: [K], target: {table: schedulehub.nowhere, key: [k]}}
  b: {key: [DESCRIPTION], target: {table: schedulehub.sites, key: [description]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	err = st.PrepareTargets(ctx, cat)
	for _, want := range []string{`entity "a": target table schedulehub.nowhere does not exist`, `entity "b": target table schedulehub.sites needs a unique index`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %q", err, want)
		}
	}
}

func TestRedactURL(t *testing.T) {
	if got := store.RedactURL("postgres://bridge_user:s3cret@db:5432/x"); strings.Contains(got, "s3cret") {
		t.Errorf("RedactURL leaked the password: %s", got)
	}
	if got := store.RedactURL("host=db password=s3cret user=x"); strings.Contains(got, "s3cret") {
		t.Errorf("RedactURL leaked the password: %s", got)
	}
	_, err := store.Open(context.Background(), store.Config{URL: "postgres://u:s3cret@127.0.0.1:1/x?connect_timeout=1"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Open error %v must exist and not contain the password", err)
	}
}

// A field no rule maps and no target column takes is counted with a sample,
// written by the next flush, and added up across flushes.
func TestUnmappedFieldsAreCounted(t *testing.T) {
	f := newFixture(t)
	f.apply("sites", nil, `{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S1","DESCRIPTION":"main","REGION_CODE":"EU-N"}}`)
	if err := f.st.FlushDrift(f.ctx); err != nil {
		t.Fatal(err)
	}
	f.apply("sites", nil, `{"entity":"sites","op":"upsert","rowversion":"2026-01-02T00:00:00Z","data":{"CONTRACT":"S1","DESCRIPTION":"main","REGION_CODE":"EU-S"}}`)
	if err := f.st.FlushDrift(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.rows(`SELECT entity_name, field_name, seen_count, sample_value FROM bridge.unmapped_fields`); got != "sites|REGION_CODE|2|EU-N" {
		t.Errorf("unmapped fields: %q", got)
	}
	if got := f.st.UnmappedTotals()[[2]string{"sites", "REGION_CODE"}]; got != 2 {
		t.Errorf("total for the metrics: %d", got)
	}
}

// A batch around a rejected row is written again in parts (bisection), and the
// unmapped fields of each record written count once, under the record's own
// hash: four records, one rejected, three counts.
func TestUnmappedFieldsCountEachRecordOnceThroughBisection(t *testing.T) {
	f := newFixture(t)
	if _, err := f.conn.Exec(f.ctx, `ALTER TABLE schedulehub.sites ADD CONSTRAINT no_bad CHECK (description IS DISTINCT FROM 'bad')`); err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for i, desc := range []string{"main", "north", "bad", "south"} {
		bodies = append(bodies, fmt.Sprintf(`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S%d","DESCRIPTION":%q,"REGION_CODE":"EU-%d"}}`, i, desc, i))
	}
	res := f.apply("sites", nil, bodies...)
	if res.Counts.Inserted != 3 || res.Counts.Failed != 1 {
		t.Fatalf("counts %+v, want three written and one rejected", res.Counts)
	}
	if got := f.st.UnmappedTotals()[[2]string{"sites", "REGION_CODE"}]; got != 3 {
		t.Errorf("REGION_CODE counted %d times, want 3 (the records written)", got)
	}
}

// Rows written to a target without their ledger rows (no bk_hash to tell them
// apart) count once each too, by their target key.
func TestUnmappedFieldsOfTargetRowsWithoutHashCountOncePerRow(t *testing.T) {
	f := newFixture(t)
	rows := []map[string]any{
		{"contract": "S1", "description": "a", "region_code": "EU-N"},
		{"contract": "S2", "description": "b", "region_code": "EU-S"},
		{"contract": "S3", "description": "c", "region_code": "EU-W"},
	}
	if err := f.st.InTx(f.ctx, func(tx apply.Tx) error {
		return tx.WriteTarget(f.ctx, "sites", storetest.TargetRows(rows), nil)
	}); err != nil {
		t.Fatal(err)
	}
	if got := f.st.UnmappedTotals()[[2]string{"sites", "REGION_CODE"}]; got != 3 {
		t.Errorf("REGION_CODE counted %d times for 3 rows", got)
	}
}

// The unmapped fields of a row the target rejects are not counted: the row is
// not written (its savepoint is rolled back), only the others are.
func TestUnmappedFieldsOfARejectedRowAreNotCounted(t *testing.T) {
	f := newFixture(t)
	if _, err := f.conn.Exec(f.ctx, `ALTER TABLE schedulehub.sites ADD CONSTRAINT no_bad CHECK (description IS DISTINCT FROM 'bad')`); err != nil {
		t.Fatal(err)
	}
	res := f.apply("sites", nil,
		`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S1","DESCRIPTION":"main","REGION_CODE":"EU-N"}}`,
		`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S2","DESCRIPTION":"bad","REGION_CODE":"EU-S"}}`)
	if res.Counts.Inserted != 1 || res.Counts.Failed != 1 {
		t.Fatalf("counts %+v, want one written and one rejected", res.Counts)
	}
	if got := f.st.UnmappedTotals()[[2]string{"sites", "REGION_CODE"}]; got != 1 {
		t.Errorf("REGION_CODE counted %d times, want once (the row written)", got)
	}
}
