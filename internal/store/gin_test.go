package store_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/store"
)

// db gin enable builds the payload index part by part without blocking writers,
// finishes a build that stopped half-way, serves containment, follows months
// made later, and two at once leave one index; disable drops it.
func TestGINIndex(t *testing.T) {
	f := newFixture(t)
	ctx := f.ctx
	exec := func(sql string) {
		t.Helper()
		if _, err := f.conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO bridge.failed_records (uid, entity_name, raw_bytes, raw_data, stage_failed, error_message)
		SELECT ` + uuidV7At(`now()`) + `, 'items', '\x7b7d', jsonb_build_object('entity', 'items', 'data', jsonb_build_object('PART_NO', 'P' || i, 'DESCRIPTION', repeat('x', 50))),
		       'mapping', 'e'
		FROM generate_series(1, 50000) i`)
	exec(`ANALYZE bridge.failed_records`)
	if exists, _, err := f.st.GINState(ctx); err != nil || exists {
		t.Fatalf("a new database has the index: %v %v", exists, err)
	}

	// A build that stopped half-way leaves an invalid part; enable builds it again.
	part := "failed_records_" + monthStart(time.Now(), 0).Format("2006_01")
	stopped, err := pgx.Connect(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer stopped.Close(ctx)
	if _, err := stopped.Exec(ctx, `SET statement_timeout = '20ms'`); err != nil {
		t.Fatal(err)
	}
	if _, err := stopped.Exec(ctx, `CREATE INDEX CONCURRENTLY `+part+`_raw_data_gin ON bridge.`+part+` USING gin (raw_data jsonb_path_ops)`); err == nil {
		t.Fatal("the build meant to stop half-way finished")
	}
	if got := f.rows(`SELECT indisvalid FROM pg_index WHERE indexrelid = 'bridge.` + part + `_raw_data_gin'::regclass`); got != "false" {
		t.Fatalf("the stopped build left valid=%s", got)
	}

	// Two at once: one builds, the other is told it is busy (or finds it done).
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f.st.EnableGIN(ctx, nil)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, store.ErrGINBusy) {
			t.Fatal(err)
		}
	}
	if errs[0] != nil && errs[1] != nil {
		t.Fatalf("neither built the index: %v", errs)
	}
	if exists, valid, err := f.st.GINState(ctx); err != nil || !exists || !valid {
		t.Fatalf("after enable: exists=%v valid=%v %v", exists, valid, err)
	}
	if got := f.rows(`SELECT count(*) FROM pg_indexes WHERE schemaname = 'bridge' AND indexdef LIKE '%gin (raw_data jsonb_path_ops)%' AND tablename = '` + part + `'`); got != "1" {
		t.Errorf("%s has %s GIN indexes, want 1 (the stopped one rebuilt, not doubled)", part, got)
	}
	// Enabling again changes nothing.
	if err := f.st.EnableGIN(ctx, nil); err != nil {
		t.Fatal(err)
	}

	// Containment uses it.
	plan := f.rows(`EXPLAIN SELECT uid FROM bridge.failed_records WHERE raw_data @> '{"data":{"PART_NO":"P77"}}'`)
	if !strings.Contains(plan, "raw_data_gin") {
		t.Errorf("containment does not use the index:\n%s", plan)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE raw_data @> '{"data":{"PART_NO":"P77"}}'`); got != "1" {
		t.Errorf("found %s, want 1", got)
	}
	// A month made later gets its part at once.
	later := monthStart(time.Now(), -7)
	if _, err := f.st.EnsurePartitions(ctx, later); err != nil {
		t.Fatal(err)
	}
	if got := f.rows(`SELECT count(*) FROM pg_indexes WHERE schemaname = 'bridge' AND tablename = 'failed_records_` + later.Format("2006_01") + `' AND indexdef LIKE '%gin%'`); got != "1" {
		t.Errorf("a month made later has %s GIN indexes, want 1", got)
	}
	if _, valid, _ := f.st.GINState(ctx); !valid {
		t.Error("a month made later left the index invalid")
	}

	existed, err := f.st.DisableGIN(ctx, time.Second)
	if err != nil || !existed {
		t.Fatalf("disable: %v %v", existed, err)
	}
	if exists, _, _ := f.st.GINState(ctx); exists {
		t.Error("the index is still there")
	}
	if existed, err := f.st.DisableGIN(ctx, time.Second); err != nil || existed {
		t.Errorf("disable again: %v %v", existed, err)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records WHERE raw_data @> '{"data":{"PART_NO":"P77"}}'`); got != "1" {
		t.Errorf("without the index found %s, want 1", got)
	}
}
