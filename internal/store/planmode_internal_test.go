package store

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/normalize"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Parking checks each row's key to its batch against the partitioned
// sync_batches by the check's generic plan, with no sequential scan, and gives
// the settings back: a statement queued before it runs with the defaults, a
// lookup right after it is still planned afresh, and the statement after that
// runs with the defaults. A trigger on the queue notes the settings each parked
// row was written with (the key checks run at the end of that statement, with
// the same). Under the generic plan the key is still checked: a row of a batch
// that does not exist is refused, and the savepoint it ran under gives the
// defaults back too.
func TestParkingChecksItsKeysByTheGenericPlan(t *testing.T) {
	ctx := context.Background()
	s := migratedStore(t, "planmode")
	const settings = `current_setting('plan_cache_mode') || '/' || current_setting('enable_seqscan')`
	if _, err := s.pool.Exec(ctx, `
		CREATE TABLE public.modes (n serial, mode text);
		CREATE FUNCTION public.note_mode() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN INSERT INTO public.modes (mode) VALUES ('parked ' || `+settings+`); RETURN NEW; END $$;
		CREATE TRIGGER note_mode BEFORE INSERT ON bridge.pending_children FOR EACH ROW EXECUTE FUNCTION public.note_mode()`); err != nil {
		t.Fatal(err)
	}
	batch := uuid.Must(uuid.NewV7())
	if _, err := s.pool.Exec(ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, source_system, sync_type, status)
		VALUES ($1, 'work_centers', 'realtime', 'realtime', 'running')`, batch); err != nil {
		t.Fatal(err)
	}
	mode := func(tx *tx, args ...any) string {
		t.Helper()
		q, err := tx.query(ctx, `SELECT `+settings, args...)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectExactlyOneRow(q, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	var after, lookup, afterRefused string
	var refused error
	err := s.inTx(ctx, func(tx *tx) error {
		// Sent in the park's pipeline, ahead of it.
		tx.laterExec("probe", `INSERT INTO public.modes (mode) VALUES ('before ' || `+settings+`)`)
		if _, err := tx.Park(ctx, batch, "work_centers", []apply.ParkRow{parkRow("WC1")}, time.Minute, 10); err != nil {
			return err
		}
		// The lookup goes with the reset parking left pending.
		lookup = mode(tx, customPlan)
		after = mode(tx)
		refused = tx.Savepoint(ctx, func() error {
			_, err := tx.Park(ctx, uuid.Must(uuid.NewV7()), "work_centers", []apply.ParkRow{parkRow("WC2")}, time.Minute, 10)
			return err
		})
		afterRefused = mode(tx)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var modes string
	if err := s.pool.QueryRow(ctx, `SELECT string_agg(mode, ', ' ORDER BY n) FROM public.modes`).Scan(&modes); err != nil {
		t.Fatal(err)
	}
	// The second row was rolled back with its savepoint, its note with it.
	if want := "before auto/on, parked force_generic_plan/off"; modes != want {
		t.Errorf("settings noted: %q, want %q", modes, want)
	}
	if lookup != "force_custom_plan/on" || after != "auto/on" || afterRefused != "auto/on" {
		t.Errorf("a lookup right after parking: %q, the statement after: %q, after a refused park: %q; want force_custom_plan/on, auto/on, auto/on", lookup, after, afterRefused)
	}
	var pgErr *pgconn.PgError
	if !errors.As(refused, &pgErr) || pgErr.Code != "23503" || pgErr.TableName != "pending_children" {
		t.Errorf("parking under a batch that does not exist: %v, want the batch key refused", refused)
	}
	var parked int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM bridge.pending_children`).Scan(&parked); err != nil || parked != 1 {
		t.Errorf("%d rows parked (%v), want 1", parked, err)
	}
}

// The generic plan of the key check is made once per connection, for the
// month as it was then: made for a month analyzed while it held a few batches,
// with sequential scans allowed, it scanned the whole month for every key as
// the month grew. With parking's settings it looks the key up by the month's
// primary key. The statement is the one PostgreSQL checks the key with.
func TestTheGenericKeyCheckOfAYoungMonthUsesItsIndex(t *testing.T) {
	ctx := context.Background()
	s := migratedStore(t, "youngmonth")
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	for range 50 {
		if _, err := conn.Exec(ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, source_system, sync_type, status)
			VALUES ($1, 'work_centers', 'realtime', 'realtime', 'running')`, uuid.Must(uuid.NewV7())); err != nil {
			t.Fatal(err)
		}
	}
	exec(`ANALYZE bridge.sync_batches`)
	exec(`BEGIN`)
	defer func() { _, _ = conn.Exec(ctx, `ROLLBACK`) }()
	exec(planModeGeneric)
	exec(noSeqScan)
	exec(`PREPARE check_key (uuid) AS SELECT 1 FROM "bridge"."sync_batches" x WHERE "uid" OPERATOR(pg_catalog.=) $1 FOR KEY SHARE OF x`)
	rows, err := conn.Query(ctx, `EXPLAIN EXECUTE check_key ('`+uuid.Must(uuid.NewV7()).String()+`')`)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "Index Scan using sync_batches_") {
		t.Errorf("the key check's generic plan does not look the key up by index:\n%s", plan)
	}
}

func parkRow(workCenter string) apply.ParkRow {
	key := []string{"S1", workCenter}
	return apply.ParkRow{
		Child: normalize.Record{Entity: "work_centers", Op: event.OpUpsert, SourceSystem: "IFS", Key: key,
			BKHash: fmt.Sprintf("hash-%s", workCenter), RowVersion: event.RowVersion{Text: "1", Ord: 1}},
		Version:  pipeline.Version{Ord: 1, Source: event.Realtime, Seq: 1},
		Parent:   normalize.ParentRef{Entity: "sites", BKHash: "hash-S1", Key: []string{"S1"}},
		Delivery: pipeline.Delivery{Subject: "apismith.cdc.work_centers", Source: event.Realtime, StreamSeq: 1, Data: []byte(`{"entity":"work_centers"}`)},
	}
}

// migratedStore opens a store on a database of its own, migrated, dropped when
// the test ends.
func migratedStore(t *testing.T, name string) *Store {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, adminURL())
	if err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf("syncflow_test_store_%s_%d", name, time.Now().UnixNano())
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), `DROP DATABASE IF EXISTS `+db+` WITH (FORCE)`)
		admin.Close(context.Background())
	})
	u, err := neturl.Parse(adminURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + db
	url := u.String()
	m, err := NewMigrator(url)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Up(); err != nil {
		t.Fatal(err)
	}
	_ = m.Close()
	s, err := Open(ctx, Config{URL: url, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}
