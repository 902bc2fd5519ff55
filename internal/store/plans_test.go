package store_test

import (
	"context"
	"crypto/md5"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
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
	conn, exec := planDatabase(t, "plans")
	began := time.Now()
	// A year of history: batches and dead letters spread over twelve monthly
	// partitions, each with the UUIDv7 of its time, as SyncFlow writes them.
	exec(`SELECT bridge.ensure_month_partitions(t, now() - interval '12 months', 15) FROM unnest('{sync_batches,failed_records}'::text[]) t`)
	exec(`INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, replica, started_at, finished_at)
		SELECT ` + uuidV7At(`now() - i * interval '30 seconds'`) + `, (ARRAY['sites','work_centers','items','work_orders','work_order_operations'])[1 + i % 5],
		       'realtime', 'completed', 'r' || (i % 3), now() - i * interval '30 seconds', now() - i * interval '30 seconds'
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
		SELECT ` + uuidV7At(`now() - i * interval '30 seconds'`) + `, (ARRAY['sites','work_orders'])[1 + i % 2], 'APISMITH_CDC', i, '\x00',
		       CASE WHEN i % 10 = 0 THEN 'orphan' ELSE 'mapping' END, 'x',
		       CASE WHEN i % 10 <> 0 THEN now() + (i % 3600) * interval '1 second' END,
		       CASE WHEN i > 100000 THEN now() - i * interval '30 seconds' + interval '1 hour' END,
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
	// partitionIndexes names the partitions' copies of a partitioned index (none
	// for another index, or for "Index Cond: ..." text).
	partitionIndexes := func(name string) []string {
		rows, err := conn.Query(ctx, `SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = (SELECT oid FROM pg_class WHERE relname = $1 AND relnamespace = 'bridge'::regnamespace)`, name)
		if err != nil {
			t.Fatal(err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	// Five months back: a month full of rows.
	month := []string{`bridge.uuid_floor(date_trunc('month', now() - interval '5 months'))`,
		`bridge.uuid_floor(date_trunc('month', now() - interval '4 months'))`, `now() - interval '3 months'`}
	keys := `'{items,items}'::text[], ARRAY[md5('1'), md5('2')]`
	for _, tc := range []struct {
		name, sql string
		args      []string
		want      []string // each must appear in both plans
	}{
		{"the newest batch of each entity (status, gauges)", store.LastBatchesSQL,
			[]string{`'{sites,work_centers,items,work_orders,work_order_operations}'`}, []string{"Index Scan Backward", "ix_sync_batches_entity"}},
		{"unresolved dead letters by entity and stage (gauges)", store.DeadLetterCountsSQL, nil, []string{"ix_failed_records_unresolved"}},
		{"parked children by entity (gauges)", store.ParkedCountsSQL, nil, []string{"ix_pending_children_entity"}},
		{"due parked children (sweeper)", store.SweepDueSQL, []string{"500"}, []string{"ix_pending_children_retry", "Index Cond: (next_retry_at <= now())"}},
		{"due dead letters (retry worker)", store.DueDeadLettersSQL, []string{"500", "4194304"}, []string{"ix_failed_records_retry", "Index Cond: (next_retry_at <= now())"}},
		{"ledger rows of a batch (every batch)", store.ReadLedgerSQL, []string{`'items'`, `ARRAY[md5('1') || md5('-1'), md5('6') || md5('-6')]`},
			[]string{"pk_synced_records"}},
		{"orphans a parent releases (a parent batch, when orphans of its entity wait)", store.ReleaseOrphansSQL, []string{keys, "1000", "4194304"},
			[]string{"ix_failed_records_orphan_parent", "pk_synced_records"}},
		{"parents children wait for, after a commit", store.ReleasableChildrenSQL, []string{keys},
			[]string{"ix_pending_children_parent", "pk_synced_records"}},
		{"parents orphans wait for, after a commit", store.ReleasableOrphanParentsSQL, []string{keys},
			[]string{"ix_failed_records_orphan_parent", "pk_synced_records"}},
		{"orphans whose parent is applied (the sweeper's round)", store.ReleasableOrphansSQL, []string{"1000", "4194304"},
			[]string{"ix_failed_records_orphan_parent", "pk_synced_records"}},
		{"children a parent releases (every parent batch)", store.ReleaseChildrenSQL, []string{keys, "1000", "4194304"},
			[]string{"ix_pending_children_parent", "pk_synced_records"}},
		{"do orphans of the parents' entities wait (every parent batch)", store.OrphansOfSQL([]apply.Key{{Entity: "items"}, {Entity: "sites"}, {Entity: "items"}}), nil,
			[]string{"ix_failed_records_orphan_parent"}},
		{"a replica's running batches (start)", store.AbandonBatchesSQL, []string{`'r1'`}, []string{"ix_sync_batches_status"}},
		{"may prune drop a month of dead letters", store.KeptReasonSQL["failed_records"], month,
			nil}, // an index of its own month, whichever: no sequential scan

		{"may prune drop a month of batches", store.KeptReasonSQL["sync_batches"], month,
			[]string{"ix_sync_batches_status", "ix_failed_records_batch", "ix_pending_children_batch"}},
	} {
		custom, generic := plan(tc.sql, tc.args...)
		for _, want := range tc.want {
			// An index of a partitioned table is used through its partitions' indexes.
			alts := append(partitionIndexes(want), want)
			uses := func(p string) bool {
				return slices.ContainsFunc(alts, func(ix string) bool { return strings.Contains(p, ix) })
			}
			if !uses(custom) {
				t.Errorf("%s: the custom plan does not use %s:\n%s", tc.name, want, custom)
			}
			if !uses(generic) {
				t.Errorf("%s: the generic plan does not use %s:\n%s", tc.name, want, generic)
			}
		}
		for _, p := range []string{custom, generic} {
			if bigSeqScan(p) {
				t.Errorf("%s: a sequential scan of a big table:\n%s", tc.name, p)
			}
		}
	}
}

// planDatabase gives t a migrated database of its own, a connection to it and
// a function that runs a statement there or fails t.
func planDatabase(t *testing.T, prefix string) (*pgx.Conn, func(string)) {
	t.Helper()
	ctx := context.Background()
	db, drop, err := testenv.NewMigratedDatabase(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	return conn, exec
}

// uuidV7At is SQL for a UUIDv7 of the time t (SQL) with random bits after it.
func uuidV7At(t string) string {
	return `(left(bridge.uuid_floor(` + t + `)::text, 13) || '-7' || substr(gen_random_uuid()::text, 16))::uuid`
}

// seqScanRE finds a sequential scan of a big table or of one of its partitions,
// with the scan's total cost.
var seqScanRE = regexp.MustCompile(`Seq Scan on (?:sync_batches|synced_records|failed_records)\S* .*\(cost=[0-9.]+\.\.([0-9.]+) `)

// bigSeqScan says whether plan scans a big table, or a partition of one that
// holds rows, sequentially. (A partition with no rows yet, a month ahead, costs
// nothing to scan and the planner rightly reads it so.)
func bigSeqScan(plan string) bool {
	for _, m := range seqScanRE.FindAllStringSubmatch(plan, -1) {
		if m[1] != "0.00" {
			return true
		}
	}
	return false
}

// A young ledger has no statistics, or those of when it held a few rows: the
// first minute of a new installation, until autovacuum analyzes it. The key
// lookups of every batch run by their generic plans (store's queryEach), made
// once per connection, possibly while the ledger was empty or held three rows:
// made then, with the store's settings, and explained once the ledger has
// grown to 100,000 rows under the stale statistics, they still look each key
// up by the primary key: neither hashing the entity's rows nor scanning them,
// which at that size cost hundreds of milliseconds a batch.
func TestKeyLookupsOfAYoungLedger(t *testing.T) {
	conn, exec := planDatabase(t, "young")
	grow := func(from, to int) {
		exec(fmt.Sprintf(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq)
			SELECT 'items', md5(i::text), '["k"]', 'x', i, 'realtime', i FROM generate_series(%d, %d) i`, from, to))
	}
	// EXECUTE takes no subquery: the 500 keys as a literal.
	var hashes []string
	for i := 1; i <= 500; i++ {
		hashes = append(hashes, fmt.Sprintf("'%x'", md5.Sum([]byte(strconv.Itoa(i)))))
	}
	slices.Sort(hashes)
	keys := `ARRAY[` + strings.Join(hashes, ",") + `]`
	for _, stats := range []string{"never analyzed", "analyzed at 3 rows"} {
		for _, tc := range []struct{ name, sql, args string }{
			{"ledger rows of a batch", store.ReadLedgerSQL, `'items', ` + keys},
			{"parents present", store.PresentParentsSQL, `array_fill('items'::text, ARRAY[500]), ` + keys},
		} {
			exec(`TRUNCATE bridge.synced_records`)
			if stats != "never analyzed" {
				grow(1, 3)
				exec(`ANALYZE bridge.synced_records`)
			}
			exec(`BEGIN`)
			for _, set := range store.LookupSettings {
				exec(set)
			}
			exec(`PREPARE lookup AS ` + tc.sql)
			testenv.Rows(t, conn, `EXPLAIN EXECUTE lookup (`+tc.args+`)`) // the generic plan, made now
			grow(4, 100000)
			plan := testenv.Rows(t, conn, `EXPLAIN EXECUTE lookup (`+tc.args+`)`)
			exec(`DEALLOCATE lookup`)
			exec(`COMMIT`)
			if !strings.Contains(plan, "Index Scan using pk_synced_records") && !strings.Contains(plan, "Index Only Scan using pk_synced_records") ||
				strings.Contains(plan, "Hash") || strings.Contains(plan, "Seq Scan on synced_records") || strings.Contains(plan, "Bitmap") {
				t.Errorf("%s, %s: not a primary-key lookup per key:\n%s", tc.name, stats, plan)
			}
		}
	}
}

// The statements of a release, and the re-check's, in a young installation:
// prepared while the ledger, the queue of parked children and the orphans are
// empty (or hold three rows and were analyzed then), as in the first seconds of
// a new installation, and explained once each has grown to 20,000 rows with no
// new statistics. Each still looks every parent up by key (the ledger's primary
// key, the queue's and the orphans' parent indexes) planned afresh, as the
// store runs it (TestThePlanModeOfEachLookup). The generic plan of the join
// before, made at that moment, hashed the whole ledger or the whole queue for
// every parent batch from then on: 15 to 30 ms a statement at 5,000 events/s,
// the latency figure's p99 at 0.5 to 0.8 s.
func TestReleasesOfYoungTables(t *testing.T) {
	conn, exec := planDatabase(t, "youngrelease")
	grow := func(from, to int) {
		exec(fmt.Sprintf(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq)
			SELECT 'items', md5(i::text), '["k"]', 'x', i, 'realtime', i FROM generate_series(%d, %d) i`, from, to))
		exec(fmt.Sprintf(`INSERT INTO bridge.pending_children (uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key,
			    child_payload, child_raw, child_rowversion, rowversion_ord, source_stream, stream_seq, next_retry_at)
			SELECT gen_random_uuid(), 'work_orders', md5(i::text), 'items', md5(i::text), '["P"]', '{}', '\x7b7d', 'x', i, 'realtime', i, now()
			FROM generate_series(%d, %d) i`, from, to))
		exec(fmt.Sprintf(`INSERT INTO bridge.failed_records (uid, entity_name, stream, stream_seq, raw_bytes, stage_failed, error_message,
			    parent_entity, parent_bk_hash)
			SELECT `+uuidV7At(`now()`)+`, 'work_orders', 'APISMITH_CDC', i, '\x00', 'orphan', 'x', 'items', md5(i::text)
			FROM generate_series(%d, %d) i`, from, to))
	}
	keys := `'{items,items}'::text[], ARRAY[md5('1'), md5('2')]`
	ledgerLookup := regexp.MustCompile(`Index (Only )?Scan using pk_synced_records on synced_records r .*\n\s+Index Cond: \(\(entity_name = f\S*\.parent_entity\)`)
	lookup := regexp.MustCompile(`Index (Only )?Scan using \S*(pending_children_parent|uq_pending_children_child|orphan_parent|parent_entity_parent_bk_hash)\S*`)
	// scans says whether plan reads one of the tables, or a partition with
	// rows, sequentially (an empty partition a month ahead costs nothing).
	scans := func(plan string) bool {
		for _, m := range regexp.MustCompile(`Seq Scan on (?:synced_records|pending_children|failed_records)\S* .*\(cost=[0-9.]+\.\.([0-9.]+) `).FindAllStringSubmatch(plan, -1) {
			if m[1] != "0.00" {
				return true
			}
		}
		return false
	}
	for _, stats := range []string{"never analyzed", "analyzed at 3 rows"} {
		for _, tc := range []struct {
			name, sql, args, mode string
			// ledgerOnly: the statement reads every unresolved orphan, by
			// whichever way is cheaper; only the ledger must be looked up by key.
			ledgerOnly bool
		}{
			{"children a parent releases", store.ReleaseChildrenSQL, keys + `, 1000, 4194304`, "force_custom_plan", false},
			{"orphans a parent releases", store.ReleaseOrphansSQL, keys + `, 1000, 4194304`, "force_custom_plan", false},
			{"parents children wait for, after a commit", store.ReleasableChildrenSQL, keys, "ask", false},
			{"parents orphans wait for, after a commit", store.ReleasableOrphanParentsSQL, keys, "ask", false},
			{"orphans whose parent is applied (the sweeper's round)", store.ReleasableOrphansSQL, `1000, 4194304`, "force_custom_plan", true},
			{"the parked rows of children", store.ParkedChildrenSQL, `'{work_orders,work_orders}'::text[], ARRAY[md5('1'), md5('2')]`, "force_custom_plan", false},
		} {
			exec(`TRUNCATE bridge.synced_records, bridge.pending_children, bridge.failed_records CASCADE`)
			if stats != "never analyzed" {
				grow(1, 3)
				exec(`ANALYZE bridge.synced_records, bridge.pending_children, bridge.failed_records`)
			}
			// Prepared and run while the tables are (nearly) empty, as in the
			// first seconds of a new installation; explained once they have grown.
			// The re-check's questions run by their generic plans, with
			// askByKey's settings; the rest are planned afresh.
			exec(`BEGIN`)
			if tc.mode == "ask" {
				for _, set := range store.AskSettings {
					exec(set)
				}
			} else {
				exec(`SET LOCAL plan_cache_mode = ` + tc.mode)
			}
			exec(`PREPARE release AS ` + tc.sql)
			testenv.Rows(t, conn, `EXPLAIN EXECUTE release (`+tc.args+`)`)
			grow(4, 20000)
			plan := testenv.Rows(t, conn, `EXPLAIN EXECUTE release (`+tc.args+`)`)
			exec(`DEALLOCATE release`)
			exec(`COMMIT`)
			if tc.ledgerOnly {
				if !ledgerLookup.MatchString(plan) || strings.Contains(plan, "Seq Scan on synced_records") {
					t.Errorf("%s, %s: not a lookup by key in the ledger:\n%s", tc.name, stats, plan)
				}
				continue
			}
			ledger := strings.Contains(plan, "pk_synced_records") || !strings.Contains(tc.sql, "synced_records")
			if !ledger || !lookup.MatchString(plan) || strings.Contains(plan, "Hash Join") || scans(plan) {
				t.Errorf("%s, %s: not a lookup by key in the ledger and the queue:\n%s", tc.name, stats, plan)
			}
		}
	}
}

// Each statement that finds rows by key runs in its plan mode every time.
// Those that join the rows by key (the children's release, the lock and the
// deletes of deletes) are planned afresh, never with the generic plan
// PostgreSQL would settle on after five executions: made while the tables were
// empty or small, as here, that plan kept scanning them whole once they had
// grown (TestReleasesOfYoungTables, TestTargetLookupsOfYoungTables). Those
// that look each key up in a fenced LATERAL subquery (the ledger read and
// write, the re-check's question) run by their generic plans, made with no
// sequential scan (TestKeyLookupsOfAYoungLedger, TestReleasesOfYoungTables,
// TestTargetLookupsOfYoungTables).
func TestThePlanModeOfEachLookup(t *testing.T) {
	f := newFixture(t)
	item := func(op string, i int, rv string) string {
		return fmt.Sprintf(`{"entity":"items","op":%q,"rowversion":%q,"data":{"PART_NO":"P%d"}}`, op, rv, i)
	}
	for i := range 12 {
		f.apply("items", nil, item("upsert", i, "20260101000000"))
	}
	for i := range 12 {
		f.apply("items", nil, item("delete", i, "20260102000000"))
	}
	for _, st := range []struct {
		name, part string
		runs       int64
		generic    bool // run by its generic plan; planned afresh otherwise
	}{
		{"the children's release", "DELETE FROM bridge.pending_children p USING chunk", 12, false},
		{"the ledger write", "INSERT INTO bridge.synced_records AS r", 24, true},
		{"the lock of the target rows of deletes", "jsonb_array_elements($1::jsonb) WITH ORDINALITY", 12, false},
		{"the deletes", "SELECT u.bk_hash, x FROM unnest(", 12, false},
		{"the ledger read", "SELECT r.bk_hash, r.rowversion_ord, r.source_stream", 24, true},
		{"the re-check's question", "CROSS JOIN LATERAL (SELECT 1 FROM bridge.pending_children p", 12, true},
	} {
		generic, custom, err := store.PlanCounts(f.ctx, f.st, st.part)
		if err != nil {
			t.Fatal(err)
		}
		want, other := custom, generic // the runs in the expected mode, and in the other
		if st.generic {
			want, other = generic, custom
		}
		if other > 0 || want < st.runs {
			t.Errorf("%s: %d runs with a generic plan, %d planned afresh; want %d %s and none the other way", st.name, generic, custom, st.runs,
				map[bool]string{true: "generic", false: "planned afresh"}[st.generic])
		}
	}
}

// The statements of a batch that find rows by key through a join or a lateral
// lookup (the ledger write reading each target row's hash, the lock and the
// deletes of the rows of deletes, the ledger update of repair rewrites), in a
// young installation, as TestReleasesOfYoungTables: prepared while the target
// and the ledger are empty or were analyzed at three rows, explained once they
// hold 20,000, each with the settings the store runs it with (the ledger write
// by its generic plan, made then, with no sequential scan; the rest planned
// afresh). Each looks every key up by an index. As generic plans made at that
// moment with the default settings, each scanned the target (or hashed the
// ledger) for every key.
func TestTargetLookupsOfYoungTables(t *testing.T) {
	f := newFixture(t)
	ledger, lock, del, rewrite, err := store.TargetStatements(f.st, "items")
	if err != nil {
		t.Fatal(err)
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := f.conn.Exec(f.ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	grow := func(from, to int) {
		exec(fmt.Sprintf(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, deleted)
			SELECT 'items', md5(i::text), '["k"]', 'x', i, 'realtime', i, true FROM generate_series(%d, %d) i`, from, to))
		exec(fmt.Sprintf(`INSERT INTO schedulehub.items (part_no, description) SELECT 'P' || i, 'x' FROM generate_series(%d, %d) i`, from, to))
	}
	keys := `'[{"part_no":"P1"},{"part_no":"P2"}]'`
	custom := []string{"SET LOCAL plan_cache_mode = force_custom_plan"}
	for _, stats := range []string{"never analyzed", "analyzed at 3 rows"} {
		for _, tc := range []struct {
			name, sql, args string
			settings        []string // as the store runs it
		}{
			{"ledger write", ledger, `'items', gen_random_uuid(), ARRAY[md5('1')], ARRAY['["P1"]'], ARRAY['x'], ARRAY[5::bigint], ARRAY['realtime'], ARRAY[5::bigint], ARRAY['\x00'::bytea], ARRAY[false], ARRAY['{"part_no":"P1"}'::jsonb]`,
				store.LookupSettings},
			{"lock of deletes", lock, keys, custom},
			{"deletes", del, `'items', ARRAY[md5('1')], ARRAY['{"part_no":"P1"}'::jsonb], ARRAY[1::bigint], ARRAY['realtime'], ARRAY[1::bigint]`, custom},
			{"rewrites", rewrite, `'items', ARRAY[md5('1')], ARRAY['{"part_no":"P1"}'::jsonb], ARRAY[1::bigint], ARRAY['\x00'::bytea]`, custom},
		} {
			exec(`TRUNCATE bridge.synced_records, schedulehub.items CASCADE`)
			if stats != "never analyzed" {
				grow(1, 3)
				exec(`ANALYZE bridge.synced_records, schedulehub.items`)
			}
			exec(`BEGIN`)
			for _, set := range tc.settings {
				exec(set)
			}
			exec(`PREPARE s AS ` + tc.sql)
			testenv.Rows(t, f.conn, `EXPLAIN EXECUTE s (`+tc.args+`)`) // a generic plan is made now
			grow(4, 20000)
			plan := testenv.Rows(t, f.conn, `EXPLAIN EXECUTE s (`+tc.args+`)`)
			exec(`DEALLOCATE s`)
			exec(`COMMIT`)
			if regexp.MustCompile(`Hash Join|Seq Scan on (synced_records|items)`).MatchString(plan) ||
				!regexp.MustCompile(`Index (Only )?Scan using (pk_synced_records|items_pkey)`).MatchString(plan) {
				t.Errorf("%s, %s: not a lookup by key:\n%s", tc.name, stats, plan)
			}
		}
	}
}

// SyncFlow's sessions compile no statement (jit off): planned afresh for a
// batch of a thousand parents, a release was estimated above jit_above_cost,
// and compiling it took 15 ms (the orphans' release 58 ms) of a statement that
// runs in 2-3 ms.
func TestSessionsCompileNoStatement(t *testing.T) {
	f := newFixture(t)
	if jit, err := store.Setting(f.ctx, f.st, "jit"); err != nil || jit != "off" {
		t.Fatalf("jit in the store's sessions: %q, %v; want off", jit, err)
	}
}

// A re-check's question that fails (here: it waits for a lock longer than
// the lock timeout) rolls its transaction back and gives its connection back
// to the pool fit for use: the pool opens no new one for the next question.
func TestAFailedRecheckKeepsItsConnection(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Store.LockTimeout = 200 * time.Millisecond
		c.Store.MaxConns = 1
	})
	parents := []apply.Key{{Entity: "items", Hash: "h1"}}
	if _, err := f.st.Releasable(f.ctx, parents); err != nil {
		t.Fatal(err)
	}
	opened := store.NewConns(f.st)
	hold, err := f.conn.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hold.Exec(f.ctx, `LOCK TABLE bridge.pending_children IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Releasable(f.ctx, parents); err == nil {
		t.Fatal("the question did not fail while the queue was locked")
	}
	if err := hold.Rollback(f.ctx); err != nil {
		t.Fatal(err)
	}
	if ready, err := f.st.Releasable(f.ctx, parents); err != nil || len(ready) != 0 {
		t.Fatalf("after the lock: %v, %v", ready, err)
	}
	if n := store.NewConns(f.st); n != opened {
		t.Fatalf("the pool opened %d connections for the failed question, want none", n-opened)
	}
}

// The release of a mass re-check: 19,001 parents (a site and the work centers
// released for it, re-checked together) and 30,000 children of the site still
// parked. Both statements run as the store runs them (planned afresh, the
// re-check's question with no sequential scan, store's askByKey) and find the
// children by the parents' index. With sequential scans allowed, the
// question's plan for these statistics (every child waits for the site) read
// the whole queue for each of the 19,000 other parents. (The 28 s plan of the
// release form reverted in 3359d11 came with the statistics of its moment,
// which this test does not recreate: here that form is planned well too.)
func TestTheReleaseOfManyParents(t *testing.T) {
	conn, exec := planDatabase(t, "manyparents")
	exec(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq)
		SELECT 'work_centers', md5(i::text), '["k"]'::jsonb, 'x', i, 'realtime', i FROM generate_series(1, 19000) i
		UNION ALL SELECT 'sites', md5('site'), '["S"]', 'x', 1, 'realtime', 1`)
	exec(`INSERT INTO bridge.pending_children (uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key,
		    child_payload, child_raw, child_rowversion, rowversion_ord, source_stream, stream_seq, next_retry_at)
		SELECT gen_random_uuid(), 'work_centers', md5('c' || i), 'sites', md5('site'), '["S"]', '{}', '\x7b7d', 'x', i, 'realtime', i, now()
		FROM generate_series(1, 30000) i`)
	exec(`ANALYZE bridge.synced_records, bridge.pending_children`)
	keys := `array_fill('work_centers'::text, ARRAY[19000]) || '{sites}'::text[],
		ARRAY(SELECT md5(i::text) FROM generate_series(1, 19000) i) || ARRAY[md5('site')]`
	for _, tc := range []struct {
		name, sql, args string
		settings        []string
	}{
		{"children a parent releases", store.ReleaseChildrenSQL, keys + `, 1000, 4194304`, []string{"SET LOCAL plan_cache_mode = force_custom_plan"}},
		// The re-check asks with askByKey's settings: with sequential scans
		// on, the plan made for these statistics (every child waits for the
		// site) scanned the whole queue for each of the 19,000 other parents.
		{"parents children wait for, after a commit", store.ReleasableChildrenSQL, keys, store.AskSettings},
	} {
		// EXECUTE takes no subquery: the arrays are built first.
		var entities, hashes []string
		if err := conn.QueryRow(context.Background(), `SELECT `+keys).Scan(&entities, &hashes); err != nil {
			t.Fatal(err)
		}
		args := `'{` + strings.Join(entities, ",") + `}'::text[], '{` + strings.Join(hashes, ",") + `}'::text[]` + strings.TrimPrefix(tc.args, keys)
		exec(`BEGIN`)
		for _, set := range tc.settings {
			exec(set)
		}
		exec(`PREPARE many AS ` + tc.sql)
		plan := testenv.Rows(t, conn, `EXPLAIN EXECUTE many (`+args+`)`)
		exec(`DEALLOCATE many`)
		exec(`ROLLBACK`)
		if !strings.Contains(plan, "ix_pending_children_parent") || regexp.MustCompile(`Scan using pending_children_pkey on pending_children p `).MatchString(plan) {
			t.Errorf("%s: not the children of each parent by the parents' index:\n%s", tc.name, plan)
		}
		// The question asks the queue first, the ledger only of the parents
		// something waits for (the order written, kept by join_collapse_limit).
		if tc.sql == store.ReleasableChildrenSQL && strings.Index(plan, "ix_pending_children_parent") > strings.Index(plan, "pk_synced_records") {
			t.Errorf("%s: the ledger asked before the queue:\n%s", tc.name, plan)
		}
	}
}
