package store_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/testenv"
)

var wantTables = []string{"background_sync_schedule", "catalog_versions", "erp_sync_state", "failed_record_messages", "failed_records", "field_mappings",
	"pending_children", "sync_batches", "synced_records", "unmapped_fields", "verifications"}

var wantIndexes = []string{
	"ix_sync_batches_entity", "ix_sync_batches_status", "ix_failed_records_batch", "ix_failed_records_retry",
	"ix_pending_children_parent", "ix_erp_sync_state_entity", "ix_field_mappings_entity",
	"uq_erp_sync_state_entity_source", "uq_background_sync_schedule_entity", "uq_field_mappings_entity_source_target",
	"uq_pending_children_child", "pk_synced_records", "ix_verifications_entity_started",
}

// newMigrator returns a database of its own (dropped after the test) and a
// migrator on it.
func newMigrator(t *testing.T, prefix string) (testenv.Database, *store.Migrator) {
	t.Helper()
	db, drop, err := testenv.NewDatabase(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	m, err := store.NewMigrator(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return db, m
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, m := newMigrator(t, "migrate")
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	query := func(sql string, args ...any) []string {
		t.Helper()
		rows, err := conn.Query(ctx, sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(out)
		return out
	}
	tables := func() []string {
		// The tables, not their monthly partitions.
		return query(`SELECT relname::text FROM pg_class
			WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'bridge') AND relkind IN ('r', 'p') AND NOT relispartition`)
	}

	for round := 1; round <= 2; round++ {
		if err := m.Up(); err != nil {
			t.Fatalf("round %d: up: %v", round, err)
		}
		if got := tables(); !slices.Equal(got, wantTables) {
			t.Fatalf("round %d: bridge tables = %v, want %v", round, got, wantTables)
		}
		indexes := query(`SELECT indexname::text FROM pg_indexes WHERE schemaname = 'bridge'`)
		for _, ix := range wantIndexes {
			if !slices.Contains(indexes, ix) {
				t.Errorf("index %s missing; have %v", ix, indexes)
			}
		}
		// A ledger write sets every column but the key: an index on any of
		// them would make each rewrite of a key a non-HOT update, a new entry in
		// every index (migration 0007).
		if cols := query(`SELECT DISTINCT a.attname::text FROM pg_index i
			JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
			WHERE i.indrelid = 'bridge.synced_records'::regclass`); !slices.Equal(cols, []string{"bk_hash", "entity_name"}) {
			t.Errorf("the ledger's indexes cover %v, want only its key (bk_hash, entity_name)", cols)
		}
		// The retry index is partial on unresolved records.
		def := query(`SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_failed_records_retry'`)
		if len(def) != 1 || !strings.Contains(def[0], "(next_retry_at) WHERE (resolved_at IS NULL)") {
			t.Errorf("ix_failed_records_retry = %v", def)
		}
		// Foreign keys with their delete rules.
		// (The ledger's reference to its batch is a hint, not a key: migration 0005.)
		fks := query(`SELECT replace(c.conrelid::regclass::text, 'bridge.', '') || '.' || a.attname || ' ' ||
			       CASE c.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' ELSE c.confdeltype::text END
			FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
			WHERE c.contype = 'f' AND c.connamespace = 'bridge'::regnamespace AND c.conparentid = 0`)
		wantFKs := []string{"erp_sync_state.last_batch_uid SET NULL", "failed_record_messages.failed_uid CASCADE", "failed_records.batch_uid CASCADE",
			"pending_children.batch_uid CASCADE"}
		if !slices.Equal(fks, wantFKs) {
			t.Errorf("foreign keys = %v, want %v", fks, wantFKs)
		}
		checks := query(`SELECT conname::text FROM pg_constraint WHERE contype = 'c' AND connamespace = 'bridge'::regnamespace`)
		for _, c := range []string{"ck_sync_batches_sync_type", "ck_sync_batches_status", "ck_failed_records_stage", "ck_field_mappings_transformation"} {
			if !slices.Contains(checks, c) {
				t.Errorf("check constraint %s missing; have %v", c, checks)
			}
		}
		// Every uid primary key is a uuid, every timestamp a timestamptz.
		if bad := query(`SELECT table_name || '.' || column_name FROM information_schema.columns
			WHERE table_schema = 'bridge' AND ((column_name = 'uid' AND data_type <> 'uuid')
			   OR (column_name LIKE '%_at' AND data_type <> 'timestamp with time zone'))`); len(bad) > 0 {
			t.Errorf("columns of the wrong type: %v", bad)
		}
		testDefaultsAndTriggers(t, ctx, conn)

		v, dirty, applied, err := m.Version()
		if err != nil || dirty || !applied {
			t.Fatalf("version = %d dirty=%v applied=%v err=%v", v, dirty, applied, err)
		}
		latest, _ := store.Latest()
		if v != latest {
			t.Errorf("version %d, latest %d", v, latest)
		}
		if err := m.Down(0); err != nil {
			t.Fatalf("round %d: down: %v", round, err)
		}
		if got := tables(); len(got) != 0 {
			t.Fatalf("round %d: after down, bridge tables remain: %v", round, got)
		}
		if s := query(`SELECT nspname::text FROM pg_namespace WHERE nspname = 'bridge'`); len(s) != 0 {
			t.Fatalf("round %d: schema bridge remains after down", round)
		}
	}
}

func testDefaultsAndTriggers(t *testing.T, ctx context.Context, conn *pgx.Conn) {
	t.Helper()
	uid := testUID()
	if _, err := conn.Exec(ctx, `INSERT INTO bridge.background_sync_schedule (uid, entity_name) VALUES ($1, 'items')`, uid); err != nil {
		t.Fatal(err)
	}
	var days int
	var created, updated1, updated2 any
	if err := conn.QueryRow(ctx, `SELECT days_to_complete, created_at, updated_at FROM bridge.background_sync_schedule WHERE uid = $1`, uid).Scan(&days, &created, &updated1); err != nil {
		t.Fatal(err)
	}
	if days != 7 {
		t.Errorf("days_to_complete default = %d, want 7", days)
	}
	// updated_at is kept current by the database (now() is the transaction's time).
	if _, err := conn.Exec(ctx, `UPDATE bridge.background_sync_schedule SET is_enabled = true WHERE uid = $1`, uid); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT updated_at FROM bridge.background_sync_schedule WHERE uid = $1`, uid).Scan(&updated2); err != nil {
		t.Fatal(err)
	}
	if updated1 == updated2 {
		t.Errorf("updated_at did not change on update: %v", updated2)
	}
	for _, bad := range []string{
		`INSERT INTO bridge.sync_batches (uid, entity_name, sync_type) VALUES (gen_random_uuid(), 'x', 'hourly')`,
		`INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status) VALUES (gen_random_uuid(), 'x', 'realtime', 'done')`,
		`INSERT INTO bridge.field_mappings (uid, entity_name, source_field, target_field, transformation) VALUES (gen_random_uuid(), 'x', 'A', 'a', 'trim|titlecase')`,
		`INSERT INTO bridge.failed_records (uid, entity_name, raw_bytes, stage_failed, error_message) VALUES (gen_random_uuid(), 'x', '', 'somewhere', 'e')`,
	} {
		if _, err := conn.Exec(ctx, bad); err == nil {
			t.Errorf("accepted: %s", bad)
		}
	}
	if _, err := conn.Exec(ctx, `DELETE FROM bridge.background_sync_schedule`); err != nil {
		t.Fatal(err)
	}
}

// heldIndexDrop is migration 0007 under way in a database of its own, its
// concurrent index drop waiting for a long reader of the ledger.
type heldIndexDrop struct {
	db      testenv.Database
	reader  pgx.Tx     // the long reader, holding the ledger
	watcher *pgx.Conn  // a connection to look on with
	up      chan error // where the migration's Up reports
	connect func() *pgx.Conn
}

// holdIndexDrop migrates a database of its own (prefix) to version 6, opens a
// reader of the ledger, and starts migration 0007, whose drop then waits.
func holdIndexDrop(t *testing.T, prefix string) *heldIndexDrop {
	t.Helper()
	ctx := context.Background()
	db, m := newMigrator(t, prefix)
	if err := m.Up(); err != nil {
		t.Fatal(err)
	}
	if err := m.Down(1); err != nil {
		t.Fatal(err)
	}
	h := &heldIndexDrop{db: db, up: make(chan error, 1)}
	h.connect = func() *pgx.Conn {
		t.Helper()
		c, err := pgx.Connect(ctx, db.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(ctx) })
		return c
	}
	h.watcher = h.connect()
	reader, err := h.connect().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Exec(ctx, `SELECT count(*) FROM bridge.synced_records`); err != nil {
		t.Fatal(err)
	}
	h.reader = reader
	go func() { h.up <- m.Up() }()
	return h
}

// onWaitingDrop polls until what, run over the sessions whose DROP INDEX
// waits for a lock, is true for one of them.
func (h *heldIndexDrop) onWaitingDrop(t *testing.T, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var done bool
		if err := h.watcher.QueryRow(context.Background(), `SELECT coalesce(bool_or(`+what+`), false) FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE '%DROP INDEX%' AND wait_event_type = 'Lock'`).Scan(&done); err != nil {
			t.Fatal(err)
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the migration never waited for the reader")
		}
	}
}

// indexGone fails t when the ledger's batch index is still there.
func (h *heldIndexDrop) indexGone(t *testing.T) {
	t.Helper()
	var left bool
	if err := h.watcher.QueryRow(context.Background(), `SELECT to_regclass('bridge.ix_synced_records_batch') IS NOT NULL`).Scan(&left); err != nil || left {
		t.Errorf("the index is still there (%v)", err)
	}
}

// Migration 0007 drops the ledger's batch index while a long reader (a verify)
// holds the ledger, without stopping the writers: a plain DROP INDEX would
// queue for its exclusive lock behind the reader, and every ledger write would
// queue behind it.
func TestTheLedgerIndexDropLetsWritersOn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := holdIndexDrop(t, "migrate0007")
	h.onWaitingDrop(t, "true")
	writer := h.connect()
	if _, err := writer.Exec(ctx, `SET lock_timeout = '2s'`); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Exec(ctx, `INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq)
		VALUES ('items', md5('1'), '["1"]', 'x', 1, 'realtime', 1)`); err != nil {
		t.Errorf("a ledger write while the migration waits: %v", err)
	}
	if err := h.reader.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-h.up; err != nil {
		t.Fatalf("up: %v", err)
	}
	h.indexGone(t)
}

// An outage in the middle of migration 0007 (its session killed while the
// concurrent index drop waits for a long reader) leaves version 7 dirty, and
// maybe the index invalid. The advice `migrate up` then gives (force the
// version before, run up again) brings the schema to 7, clean, without the
// index.
func TestAnInterruptedIndexDropIsRecovered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := holdIndexDrop(t, "migrate0007cut")
	h.onWaitingDrop(t, "pg_terminate_backend(pid)")
	if err := <-h.up; err == nil {
		t.Fatal("up succeeded with its session killed")
	}
	if err := h.reader.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	m2, err := store.NewMigrator(h.db.URL) // the operator's next command
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	v, dirty, _, err := m2.Version()
	if err != nil || v != 7 || !dirty {
		t.Fatalf("after the outage: version %d, dirty %v (%v), want 7 and dirty", v, dirty, err)
	}
	err = m2.Up()
	if err == nil || !strings.Contains(err.Error(), "syncflow migrate force 6") {
		t.Fatalf("up on the dirty schema: %v, want the advice to force 6", err)
	}
	if err := m2.Force(6); err != nil {
		t.Fatal(err)
	}
	if err := m2.Up(); err != nil {
		t.Fatalf("up after force 6: %v", err)
	}
	latest, err := store.Latest()
	if err != nil {
		t.Fatal(err)
	}
	if v, dirty, _, err = m2.Version(); err != nil || v != latest || dirty {
		t.Fatalf("after the advice: version %d, dirty %v (%v), want %d and clean", v, dirty, err, latest)
	}
	h.indexGone(t)
}
