package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/storetest"
)

// The store keeps the contract the memory store keeps (storetest.Contract): where
// the two disagree on a case, a test fails, so the fake the core is tested with
// cannot drift from the store.
func TestStoreKeepsTheContract(t *testing.T) {
	storetest.Contract(t, func(t *testing.T, cat *catalog.Catalog) storetest.Backend {
		f := newFixture(t)
		if err := f.st.PrepareTargets(f.ctx, cat); err != nil {
			t.Fatal(err)
		}
		return &pgBackend{st: f.st, conn: f.conn, cat: cat}
	})
}

// pgBackend is the store as a storetest.Backend: its views read the tables, its
// faults are triggers, dropped when the test ends.
type pgBackend struct {
	st       *store.Store
	conn     *pgx.Conn
	cat      *catalog.Catalog
	triggers int
}

func (b *pgBackend) ApplyStore() apply.Store { return b.st }

func (b *pgBackend) DeadLetterStore() deadletter.Store { return store.DeadLetters{Store: b.st} }

func (b *pgBackend) query(t testing.TB, sql string, args ...any) pgx.Rows {
	t.Helper()
	rows, err := b.conn.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func (b *pgBackend) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := b.conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatal(err)
	}
}

func (b *pgBackend) LedgerRows(t testing.TB) []storetest.LedgerEntry {
	t.Helper()
	rows := b.query(t, `SELECT entity_name, bk_hash, business_key::text, rowversion, rowversion_ord, source_stream, stream_seq, payload_hash, deleted
		FROM bridge.synced_records`)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storetest.LedgerEntry, error) {
		var e storetest.LedgerEntry
		var key, src string
		var seq int64
		err := r.Scan(&e.Entity, &e.Hash, &key, &e.RowVersion, &e.Version.Ord, &src, &seq, &e.Version.Hash, &e.Deleted)
		if err == nil {
			err = json.Unmarshal([]byte(key), &e.Key)
		}
		e.Version.Source, e.Version.Seq = event.SourceNamed(src), uint64(seq)
		return e, err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(out, func(a, b storetest.LedgerEntry) int {
		return strings.Compare(a.Entity+"\x00"+a.Hash, b.Entity+"\x00"+b.Hash)
	})
	return out
}

func (b *pgBackend) ParkedRows(t testing.TB) []storetest.ParkedEntry {
	t.Helper()
	rows := b.query(t, `SELECT uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key::text, child_rowversion,
		source_stream, stream_seq, retry_count, max_retries, next_retry_at, updated_at, next_retry_at <= now(), child_raw
		FROM bridge.pending_children`)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storetest.ParkedEntry, error) {
		var e storetest.ParkedEntry
		var seq int64
		err := r.Scan(&e.UID, &e.Child.Entity, &e.Child.Hash, &e.Parent.Entity, &e.Parent.Hash, &e.ParentKey, &e.RowVersion,
			&e.Source, &seq, &e.Retries, &e.MaxRetries, &e.NextAt, &e.UpdatedAt, &e.Due, &e.Raw)
		e.Seq, e.ChildKey = uint64(seq), storetest.KeyOf(b.cat, e.Child.Entity, e.Raw)
		return e, err
	})
	if err != nil {
		t.Fatal(err)
	}
	storetest.SortParked(out)
	return out
}

func (b *pgBackend) DeadLetterRows(t testing.TB) []storetest.DeadLetterEntry {
	t.Helper()
	rows := b.query(t, `SELECT uid, entity_name, stage_failed, error_message, coalesce(stream, ''), coalesce(stream_seq, 0),
		coalesce(bk_hash, ''), coalesce(parent_entity, ''), coalesce(parent_bk_hash, ''), raw_bytes, retry_count, max_retries,
		next_retry_at, updated_at, coalesce(next_retry_at <= now(), false), resolved_at IS NOT NULL, coalesce(resolution_note, ''),
		history::text
		FROM bridge.failed_records`)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storetest.DeadLetterEntry, error) {
		var e storetest.DeadLetterEntry
		var seq int64
		var history string
		err := r.Scan(&e.UID, &e.Entity, &e.Stage, &e.Error, &e.Stream, &seq, &e.BKHash, &e.Parent.Entity, &e.Parent.Hash, &e.Raw,
			&e.Retries, &e.MaxRetries, &e.NextAt, &e.UpdatedAt, &e.Due, &e.Resolved, &e.Note, &history)
		if err != nil {
			return e, err
		}
		e.Seq = uint64(seq)
		var attempts []struct{ Stage, Error, Resolution string }
		if err := json.Unmarshal([]byte(history), &attempts); err != nil {
			return e, err
		}
		for _, a := range attempts {
			e.History = append(e.History, storetest.HistoryLine(a.Stage, a.Error, a.Resolution))
		}
		return e, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	storetest.SortDeadLetters(out)
	return out
}

func (b *pgBackend) BatchRows(t testing.TB) []storetest.BatchEntry {
	t.Helper()
	rows := b.query(t, `SELECT uid, entity_name, source_system, sync_type, coalesce(replica, ''), status, rows_fetched, rows_normalized,
		rows_mapped, rows_inserted, rows_updated, rows_unchanged, rows_stale, rows_deleted, rows_parked, rows_released, rows_failed
		FROM bridge.sync_batches ORDER BY uid`)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storetest.BatchEntry, error) {
		var e storetest.BatchEntry
		c := &e.Counts
		err := r.Scan(&e.UID, &e.Entity, &e.SourceSystem, &e.SyncType, &e.Replica, &e.Status, &c.Fetched, &c.Normalized, &c.Mapped,
			&c.Inserted, &c.Updated, &c.Unchanged, &c.Stale, &c.Deleted, &c.Parked, &c.Released, &c.Failed)
		return e, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (b *pgBackend) TargetRows(t testing.TB, entity string, columns ...string) []string {
	t.Helper()
	e, ok := b.cat.Entity(entity)
	if !ok {
		t.Fatalf("no entity %q", entity)
	}
	cells := make([]string, len(columns))
	for i, c := range columns {
		if name, isSet := strings.CutSuffix(c, "?"); isSet {
			cells[i] = fmt.Sprintf("(%s IS NOT NULL)::text", pgx.Identifier{name}.Sanitize())
		} else {
			cells[i] = fmt.Sprintf("coalesce(%s::text, 'NULL')", pgx.Identifier{c}.Sanitize())
		}
	}
	rows := b.query(t, "SELECT concat_ws('|', "+strings.Join(cells, ", ")+") FROM "+pgx.Identifier{e.Target.Schema, e.Target.Table}.Sanitize())
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func (b *pgBackend) MakeParkedDue(t testing.TB) {
	b.exec(t, `UPDATE bridge.pending_children SET next_retry_at = now() - interval '1 second'`)
}

func (b *pgBackend) SetParkedRetries(t testing.TB, n int) {
	b.exec(t, `UPDATE bridge.pending_children SET retry_count = $1`, n)
}

func (b *pgBackend) MakeDeadLettersDue(t testing.TB) {
	b.exec(t, `UPDATE bridge.failed_records SET next_retry_at = now() - interval '1 second'
		WHERE resolved_at IS NULL AND next_retry_at IS NOT NULL`)
}

// RejectTargetRow installs a trigger that refuses the rows with a check
// violation (23514), as a constraint of the target would.
func (b *pgBackend) RejectTargetRow(t testing.TB, entity, column, value string) {
	e, ok := b.cat.Entity(entity)
	if !ok {
		t.Fatalf("no entity %q", entity)
	}
	b.trigger(t, pgx.Identifier{e.Target.Schema, e.Target.Table}.Sanitize(), "INSERT",
		fmt.Sprintf("NEW.%s::text = %s", pgx.Identifier{column}.Sanitize(), quote(value)), "23514")
}

// BreakParking installs a trigger on the parked children: a check violation
// (23514) when rejected, else an internal error (XX000), of no kind the core knows.
func (b *pgBackend) BreakParking(t testing.TB, childHash string, rejected bool) {
	code := "XX000"
	if rejected {
		code = "23514"
	}
	b.trigger(t, "bridge.pending_children", "INSERT OR UPDATE", "NEW.child_bk_hash = "+quote(childHash), code)
}

// trigger makes statements of kind on table fail with code where cond holds.
func (b *pgBackend) trigger(t testing.TB, table, kind, cond, code string) {
	t.Helper()
	b.triggers++
	name := fmt.Sprintf("storetest_fault_%d", b.triggers)
	b.exec(t, fmt.Sprintf(`
		CREATE FUNCTION bridge.%[1]s() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF %[2]s THEN
				RAISE EXCEPTION 'injected failure' USING ERRCODE = %[3]s;
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER %[1]s BEFORE %[4]s ON %[5]s FOR EACH ROW EXECUTE FUNCTION bridge.%[1]s();`, name, cond, quote(code), kind, table))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = b.conn.Exec(ctx, fmt.Sprintf(`DROP TRIGGER IF EXISTS %[1]s ON %[2]s; DROP FUNCTION IF EXISTS bridge.%[1]s()`, name, table))
	})
}

var _ storetest.Backend = (*pgBackend)(nil)
