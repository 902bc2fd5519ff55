package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/testenv"
)

// The statements SyncFlow runs on every batch, every sweep and every gauge
// refresh keep their index plans at production sizes: a million ledger rows, a
// million batches, a hundred thousand parked children and dead letters each.
// Every plan is checked twice: as a custom plan for the values given, and as
// the generic plan a prepared statement settles on after a few executions
// (the one that once turned the ledger lock into a sequential scan).
func TestPlansAtScale(t *testing.T) {
	ctx := context.Background()
	db, drop, err := testenv.NewMigratedDatabase(ctx, "plans")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	began := time.Now()
	exec(`INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, replica, started_at, finished_at)
		SELECT gen_random_uuid(), (ARRAY['sites','work_centers','items','work_orders','work_order_operations'])[1 + i % 5],
		       'realtime', 'completed', 'r' || (i % 3), now() - i * interval '1 second', now() - i * interval '1 second'
		FROM generate_series(1, 1000000) i`)
	exec(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, payload_hash)
		SELECT (ARRAY['sites','work_centers','items','work_orders','work_order_operations'])[1 + i % 5],
		       md5(i::text) || md5((-i)::text), '["k"]', 'x', i, 'realtime', i, '\x00'
		FROM generate_series(1, 1000000) i`)
	exec(`INSERT INTO bridge.pending_children (uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key,
		    child_payload, child_raw, child_rowversion, rowversion_ord, source_stream, stream_seq, next_retry_at)
		SELECT gen_random_uuid(), 'work_orders', md5(i::text), 'items', md5((i % 5000)::text), '["P"]', '{}', '\x7b7d', 'x', i,
		       'realtime', i, now() + (i % 3600) * interval '1 second'
		FROM generate_series(1, 100000) i`)
	exec(`INSERT INTO bridge.failed_records (uid, entity_name, stream, stream_seq, raw_bytes, stage_failed, error_message,
		    next_retry_at, resolved_at, parent_entity, parent_bk_hash)
		SELECT gen_random_uuid(), (ARRAY['sites','work_orders'])[1 + i % 2], 'APISMITH_CDC', i, '\x00',
		       CASE WHEN i % 10 = 0 THEN 'orphan' ELSE 'mapping' END, 'x',
		       CASE WHEN i % 10 <> 0 THEN now() + (i % 3600) * interval '1 second' END,
		       CASE WHEN i > 100000 THEN now() END,
		       CASE WHEN i % 10 = 0 THEN 'items' END, CASE WHEN i % 10 = 0 THEN md5((i % 5000)::text) END
		FROM generate_series(1, 1000000) i`)
	exec(`VACUUM ANALYZE`) // as autovacuum would have by then: the visibility map is set
	t.Logf("built in %s", time.Since(began).Round(time.Second))

	// plan prepares sql, then explains it with the arguments as a custom and as a
	// generic plan.
	n := 0
	plan := func(sql string, args ...string) (custom, generic string) {
		t.Helper()
		n++
		name := fmt.Sprintf("plan_%d", n)
		exec(`PREPARE ` + name + ` AS ` + sql)
		defer exec(`DEALLOCATE ` + name)
		call := `EXPLAIN EXECUTE ` + name
		if len(args) > 0 {
			call += "(" + strings.Join(args, ", ") + ")"
		}
		for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
			exec(`SET plan_cache_mode = ` + mode)
			out := testenv.Rows(t, conn, call)
			if mode == "force_custom_plan" {
				custom = out
			} else {
				generic = out
			}
		}
		exec(`RESET plan_cache_mode`)
		return custom, generic
	}
	keys := `'{items,items}'::text[], ARRAY[md5('1'), md5('2')]`
	for _, tc := range []struct {
		name, sql string
		args      []string
		want      []string // each must appear in both plans
	}{
		{"the newest batch of each entity (status, gauges)", store.LastBatchesSQL,
			[]string{`'{sites,work_centers,items,work_orders,work_order_operations}'`}, []string{"Index Scan Backward using ix_sync_batches_entity"}},
		{"unresolved dead letters by entity and stage (gauges)", store.DeadLetterCountsSQL, nil, []string{"ix_failed_records_unresolved"}},
		{"parked children by entity (gauges)", store.ParkedCountsSQL, nil, []string{"ix_pending_children_entity"}},
		{"due parked children (sweeper)", store.SweepDueSQL, []string{"500"}, []string{"ix_pending_children_retry", "Index Cond: (next_retry_at <= now())"}},
		{"due dead letters (retry worker)", store.DueDeadLettersSQL, []string{"500", "4194304"}, []string{"ix_failed_records_retry", "Index Cond: (next_retry_at <= now())"}},
		{"ledger rows of a batch (every batch)", store.LockLedgerSQL, []string{`'items'`, `ARRAY[md5('1') || md5('-1'), md5('6') || md5('-6')]`},
			[]string{"pk_synced_records"}},
		{"children and orphans a parent releases (every parent batch)", store.ReleaseSQL, []string{keys, "1000", "4194304"},
			[]string{"ix_pending_children_parent", "ix_failed_records_orphan_parent", "pk_synced_records"}},
		{"anything to release after a commit", store.AnyReleasableSQL, []string{keys},
			[]string{"ix_pending_children_parent", "ix_failed_records_orphan_parent"}},
		{"a replica's running batches (start)", store.AbandonBatchesSQL, []string{`'r1'`}, []string{"ix_sync_batches_status"}},
	} {
		custom, generic := plan(tc.sql, tc.args...)
		for _, want := range tc.want {
			if !strings.Contains(custom, want) {
				t.Errorf("%s: the custom plan does not use %s:\n%s", tc.name, want, custom)
			}
			if !strings.Contains(generic, want) {
				t.Errorf("%s: the generic plan does not use %s:\n%s", tc.name, want, generic)
			}
		}
		for _, p := range []string{custom, generic} {
			if strings.Contains(p, "Seq Scan on sync_batches") || strings.Contains(p, "Seq Scan on synced_records") {
				t.Errorf("%s: a sequential scan of a big table:\n%s", tc.name, p)
			}
		}
	}
}
