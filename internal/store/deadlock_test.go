package store_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// applyManyAsync applies bodies of entity as one batch (stream sequences from
// seq), counted in batch, and reports the result when the transaction ends.
func (f *fixture) applyManyAsync(entity string, seq uint64, batch uuid.UUID, bodies ...string) <-chan error {
	done := make(chan error, 1)
	e, _ := f.cat.Entity(entity)
	ds := make([]pipeline.Delivery, len(bodies))
	for i, b := range bodies {
		ds[i] = pipeline.Delivery{Subject: event.Realtime.Subject(entity), Source: event.Realtime, StreamSeq: seq + uint64(i), Data: []byte(b)}
	}
	go func() {
		prepared := pipeline.Preparer{Catalog: f.cat}.Prepare(ds)
		_, err := f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: batch, Source: event.Realtime, Replica: "deadlock", Deliveries: ds, Prepared: prepared})
		done <- err
	}()
	return done
}

// siteData is a sites event carrying the fields data holds.
func siteData(op, rv, data string) string {
	return fmt.Sprintf(`{"entity":"sites","op":%q,"rowversion":%q,"data":%s}`, op, rv, data)
}

// Two replicas writing the same new keys in one batch each, each batch holding
// two sets of columns or an upsert and a delete, do not deadlock: a trigger
// slows the first statement of each, so that both have written something
// before either goes on. (With the target rows of new keys written before their
// ledger rows, each waited for the other's first row: 40P01.)
func TestNoDeadlockOnNewKeys(t *testing.T) {
	f := newFixture(t)
	// A slow insert (after the row is in: its index entries are taken) makes
	// both transactions finish their first statement before either starts its
	// second, as a loaded server would now and then.
	f.sleepWhen("schedulehub.slow", "AFTER INSERT ON schedulehub.sites", "NEW.description = 'slow' OR NEW.company = 'slow'", 0.5)
	const r1, r2 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"
	for _, tc := range []struct {
		name string
		a, b []string
	}{
		// Different column sets: one statement per set, each would take its keys
		// in an order of its own (A: S2 then S1, B: S1 then S2) were the
		// statements not cut into runs in key order.
		{"upserts of other columns",
			[]string{siteData("upsert", r1, `{"CONTRACT":"S1","DESCRIPTION":"a"}`), siteData("upsert", r1, `{"CONTRACT":"S2","COMPANY":"slow"}`)},
			[]string{siteData("upsert", r2, `{"CONTRACT":"S1","COMPANY":"slow"}`), siteData("upsert", r2, `{"CONTRACT":"S2","DESCRIPTION":"b"}`)}},
		// An upsert and a delete each: the upserts' statement first, then the
		// deletes' ledger rows.
		{"an upsert and a delete each",
			[]string{siteData("upsert", r1, `{"CONTRACT":"S1","DESCRIPTION":"slow"}`), siteData("delete", r1, `{"CONTRACT":"S2"}`)},
			[]string{siteData("delete", r2, `{"CONTRACT":"S1"}`), siteData("upsert", r2, `{"CONTRACT":"S2","DESCRIPTION":"slow"}`)}},
	} {
		f.truncate()
		b1, b2 := testUID(), testUID()
		if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type) VALUES ($1, 'sites', 'realtime'), ($2, 'sites', 'realtime')`, b1, b2); err != nil {
			t.Fatal(err)
		}
		doneA := f.applyManyAsync("sites", 100, b1, tc.a...)
		doneB := f.applyManyAsync("sites", 200, b2, tc.b...)
		for i, done := range []<-chan error{doneA, doneB} {
			if err := <-done; err != nil {
				t.Errorf("%s: replica %c: %v (kind %q)", tc.name, 'A'+i, err, apply.Kind(err))
			}
		}
	}
}

// After a race on a key, whichever commits first, the ledger's target key and
// hash are those of the target row as it stands.
func TestARaceKeepsTheHash(t *testing.T) {
	f := newFixture(t)
	const r = "2026-01-01T00:00:10Z"
	winner := raceVersion{event.Realtime, 5, siteData("upsert", r, `{"CONTRACT":"S1","DESCRIPTION":"change"}`)}
	loser := raceVersion{event.Backfill, 900, siteData("upsert", r, `{"CONTRACT":"S1","COMPANY":"copy"}`)}
	for _, order := range []string{"winner first", "winner second"} {
		f.truncate()
		first, second := winner, loser
		if order == "winner second" {
			first, second = loser, winner
		}
		f.race("sites", first, second)
		got := f.rows(`SELECT r.stream_seq, r.target_key = ROW(t.contract)::text,
			r.target_hash = int8send(hashtextextended(rtrim((t.*)::text, ',)'), 0))
			FROM bridge.synced_records r, schedulehub.sites t`)
		if got != "5|true|true" {
			t.Errorf("%s: %q, want 5|true|true; target %s", order, got, f.rows(`SELECT * FROM schedulehub.sites`))
		}
	}
}

// A key the target has but the ledger does not (a target loaded before SyncFlow,
// or after ForgetVersions): an upsert of it and a delete of it at the same time
// must not deadlock: the key is new to the ledger in both, so both write its
// ledger row before the target row.
func TestNoDeadlockOnATargetRowWithoutLedgerRow(t *testing.T) {
	f := newFixture(t)
	f.sleepWhen("schedulehub.slow_update", "BEFORE UPDATE ON schedulehub.sites", "NEW.description = 'slow'", 0.5)
	if _, err := f.conn.Exec(f.ctx, `INSERT INTO schedulehub.sites (contract, description) VALUES ('S3', 'loaded')`); err != nil {
		t.Fatal(err)
	}
	b1, b2 := testUID(), testUID()
	if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type) VALUES ($1, 'sites', 'realtime'), ($2, 'sites', 'realtime')`, b1, b2); err != nil {
		t.Fatal(err)
	}
	doneA := f.applyManyAsync("sites", 100, b1, siteData("upsert", "2026-01-01T00:00:01Z", `{"CONTRACT":"S3","DESCRIPTION":"slow"}`))
	time.Sleep(200 * time.Millisecond) // A has reached its trigger (it sleeps there, holding what it wrote)
	doneB := f.applyManyAsync("sites", 200, b2, siteData("delete", "2026-01-01T00:00:02Z", `{"CONTRACT":"S3"}`))
	for i, done := range []<-chan error{doneA, doneB} {
		if err := <-done; err != nil {
			t.Errorf("replica %c: %v (kind %q)", 'A'+i, err, apply.Kind(err))
		}
	}
	if got := f.rows(`SELECT count(*) FROM schedulehub.sites`) + "/" + f.rows(`SELECT deleted FROM bridge.synced_records`); got != "0/true" {
		t.Errorf("target rows/ledger deleted: %s, want 0/true", got)
	}
}

// A key that becomes known between two transactions' reads of the ledger: C
// inserts S1; B reads the ledger before C commits (S1 is new to it) and waits
// for C's target row; C commits and B updates the target row (slowly); A reads
// the ledger after C's commit (S1 is known to it). Were A to lock S1's ledger row
// when it reads it, A would wait for B's target row while B waited for A's
// ledger row: every transaction takes a key's target row first, and the
// ledger's read locks nothing.
func TestNoDeadlockWhenAKeyBecomesKnownInBetween(t *testing.T) {
	f := newFixture(t)
	f.sleepWhen("schedulehub.slow_b", "BEFORE UPDATE ON schedulehub.sites", "NEW.description = 'slowB'", 1.5)
	deadlocks := func() (n int64) {
		t.Helper()
		if _, err := f.conn.Exec(f.ctx, `SELECT pg_stat_clear_snapshot()`); err != nil {
			t.Fatal(err)
		}
		if err := f.conn.QueryRow(f.ctx, `SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := deadlocks()
	batches, release := f.batchesFirstHeld("sites", 3)
	bC, bB, bA := batches[0], batches[1], batches[2]
	doneC := f.applyAsync("sites", raceVersion{event.Realtime, 1, siteEvent("upsert", "S1", "2026-01-01T00:00:01Z", "c")}, bC)
	f.waitForLockWaits(1) // C wrote S1 and waits to count its batch
	doneB := f.applyAsync("sites", raceVersion{event.Realtime, 2, siteEvent("upsert", "S1", "2026-01-01T00:00:02Z", "slowB")}, bB)
	f.waitForLockWaits(2) // B saw S1 as new and waits for C's target row
	release()
	if err := <-doneC; err != nil {
		t.Fatalf("C: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // B is in its slow trigger, holding S1's target row
	doneA := f.applyAsync("sites", raceVersion{event.Realtime, 3, siteEvent("upsert", "S1", "2026-01-01T00:00:03Z", "a")}, bA)
	for i, done := range []<-chan error{doneB, doneA} {
		if err := <-done; err != nil {
			t.Errorf("replica %c: %v (kind %q)", "BA"[i], err, apply.Kind(err))
		}
	}
	// The statistics are sent when a session goes idle: wait for them.
	deadline := time.Now().Add(2 * time.Second)
	for deadlocks() == before && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := deadlocks() - before; n != 0 {
		t.Errorf("%d deadlocks in the test database", n)
	}
	if got := f.rows(`SELECT contract, description FROM schedulehub.sites`) + " " + f.rows(`SELECT stream_seq FROM bridge.synced_records`); got != "S1|a 3" {
		t.Errorf("target and ledger: %q, want S1|a 3", got)
	}
}

// A delete and an upsert of a key that a third transaction inserts at the same
// time: X inserts S1; the delete A (S1 new to it, no row to lock yet) waits for
// X's ledger row, the upsert Y for X's target row. X commits: A takes the ledger
// row, Y the target row and waits for the ledger row. A's delete must not wait
// for Y's target row then (each would wait for the other): it finds the row
// held, undoes its write and writes again, waiting for the row in its turn. A
// trigger slows A's tombstone so that Y holds the row by then.
func TestNoDeadlockOnADeleteAfterAnInsertCommits(t *testing.T) {
	f := newFixture(t)
	f.sleepWhen("schedulehub.slow_y", "BEFORE UPDATE ON schedulehub.sites", "NEW.description = 'slowY'", 1.5)
	f.sleepWhen("bridge.slow_tombstone", "BEFORE UPDATE ON bridge.synced_records", "NEW.deleted AND NOT OLD.deleted", 0.3)
	batches, release := f.batchesFirstHeld("sites", 3)
	bX, bA, bY := batches[0], batches[1], batches[2]
	doneX := f.applyAsync("sites", raceVersion{event.Realtime, 1, siteEvent("upsert", "S1", "2026-01-01T00:00:01Z", "x")}, bX)
	f.waitForLockWaits(1) // X wrote S1 and waits to count its batch
	doneA := f.applyAsync("sites", raceVersion{event.Realtime, 3, siteEvent("delete", "S1", "2026-01-01T00:00:03Z", "")}, bA)
	f.waitForLockWaits(2) // A waits for X's ledger row
	doneY := f.applyAsync("sites", raceVersion{event.Realtime, 2, siteEvent("upsert", "S1", "2026-01-01T00:00:02Z", "slowY")}, bY)
	f.waitForLockWaits(3) // Y waits for X's target row
	release()
	for i, done := range []<-chan error{doneX, doneA, doneY} {
		if err := <-done; err != nil {
			t.Errorf("replica %c: %v (kind %q)", "XAY"[i], err, apply.Kind(err))
		}
	}
	if got := f.rows(`SELECT count(*) FROM schedulehub.sites`) + " " + f.rows(`SELECT stream_seq, deleted FROM bridge.synced_records`); got != "0 3|true" {
		t.Errorf("target rows and ledger: %q, want 0 3|true", got)
	}
}

// batchesFirstHeld makes n batch rows of entity and locks the first until
// release: the transaction that counts it waits there, holding the rows it
// wrote.
func (f *fixture) batchesFirstHeld(entity string, n int) (uids []uuid.UUID, release func()) {
	f.t.Helper()
	for range n {
		uid := testUID()
		if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type) VALUES ($1, $2, 'realtime')`, uid, entity); err != nil {
			f.t.Fatal(err)
		}
		uids = append(uids, uid)
	}
	return uids, f.holdRows(`SELECT 1 FROM bridge.sync_batches WHERE uid = $1 FOR UPDATE`, uids[0])
}

// sleepWhen makes a trigger (when: e.g. "BEFORE UPDATE ON schedulehub.sites")
// sleep for seconds on each row for which cond (of NEW, and OLD on an update)
// holds, so that a transaction holds what it wrote while another catches up.
// fn names the trigger's function (schema-qualified) and the trigger.
func (f *fixture) sleepWhen(fn, when, cond string, seconds float64) {
	f.t.Helper()
	name := fn[strings.LastIndex(fn, ".")+1:]
	if _, err := f.conn.Exec(f.ctx, fmt.Sprintf(`
CREATE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF %[3]s THEN PERFORM pg_sleep(%[4]g); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER %[2]s %[5]s FOR EACH ROW EXECUTE FUNCTION %[1]s();`, fn, name, cond, seconds, when)); err != nil {
		f.t.Fatal(err)
	}
}
