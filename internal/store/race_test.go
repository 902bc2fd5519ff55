package store_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// A version of one key as a test delivers it.
type raceVersion struct {
	src  event.Source
	seq  uint64
	body string
}

func (v raceVersion) delivery(entity string) pipeline.Delivery {
	return pipeline.Delivery{Subject: v.src.Subject(entity), Source: v.src, StreamSeq: v.seq, Data: []byte(v.body)}
}

// applyAsync applies one version as its own batch, counted in batch, and reports
// the result when the transaction ends.
func (f *fixture) applyAsync(entity string, v raceVersion, batch uuid.UUID) <-chan error {
	done := make(chan error, 1)
	e, _ := f.cat.Entity(entity)
	ds := []pipeline.Delivery{v.delivery(entity)}
	go func() {
		prepared := pipeline.Preparer{Catalog: f.cat}.Prepare(ds)
		_, err := f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: batch, Source: event.Realtime, Replica: "race", Deliveries: ds, Prepared: prepared})
		done <- err
	}()
	return done
}

// waitForLockWaits waits until n backends of the test database wait for a lock.
func (f *fixture) waitForLockWaits(n int) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		// The activity view is a snapshot per transaction, and the test may be in one.
		if _, err := f.conn.Exec(f.ctx, `SELECT pg_stat_clear_snapshot()`); err != nil {
			f.t.Fatal(err)
		}
		if err := f.conn.QueryRow(f.ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			f.t.Fatal(err)
		}
		if waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			f.t.Log(f.rows(`SELECT state, wait_event_type, wait_event, left(query, 60) FROM pg_stat_activity WHERE datname = current_database()`))
			f.t.Fatalf("%d backends wait for a lock, want %d", waiting, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// race runs two transactions on the same key at the same time and commits them in
// the order given: the first writes its ledger and target rows, then waits (on its
// batch row, which the test holds) until the second has reached the same key and
// waits for the first; then both commit, first before second.
func (f *fixture) race(entity string, first, second raceVersion) {
	f.t.Helper()
	batches, release := f.batchesFirstHeld(entity, 2)
	b1, b2 := batches[0], batches[1]
	done1 := f.applyAsync(entity, first, b1)
	f.waitForLockWaits(1) // the first is done with the key and waits to count its batch
	done2 := f.applyAsync(entity, second, b2)
	f.waitForLockWaits(2) // the second waits for the first's key
	release()
	for _, done := range []<-chan error{done1, done2} {
		if err := <-done; err != nil {
			f.t.Fatal(err)
		}
	}
	if err := f.st.FlushCheckpoints(f.ctx); err != nil {
		f.t.Fatal(err)
	}
}

// Two transactions on the same key, in both commit orders, end in the state the
// version order gives, whichever commits first: the SQL guards of the ledger and of
// the parked rows encode the same tie rule as the Go decision (realtime beats a
// backfill copy of the same rowversion; within a stream the later sequence wins).
func TestConcurrentTransactionsOnOneKey(t *testing.T) {
	f := newFixture(t)
	const r = "2026-01-01T00:00:10Z"
	site := func(src event.Source, seq uint64, op, desc string) raceVersion {
		return raceVersion{src, seq, siteEvent(op, "S1", r, desc)}
	}
	cases := []struct {
		name     string
		existing bool // the key was applied before, at an older version
		a, b     raceVersion
		target   string // the sites table afterwards
		ledger   string
	}{
		{"realtime change vs backfill copy, new key", false,
			site(event.Backfill, 900, "upsert", "copy"), site(event.Realtime, 5, "upsert", "change"),
			"S1|change", "realtime|5|false"},
		{"realtime change vs backfill copy, existing key", true,
			site(event.Backfill, 900, "upsert", "copy"), site(event.Realtime, 5, "upsert", "change"),
			"S1|change", "realtime|5|false"},
		{"realtime delete of the last rowversion vs backfill copy", false,
			site(event.Backfill, 900, "upsert", "copy"), site(event.Realtime, 6, "delete", ""),
			"", "realtime|6|true"},
		{"two realtime changes in one second", true,
			site(event.Realtime, 7, "upsert", "later"), site(event.Realtime, 5, "upsert", "earlier"),
			"S1|later", "realtime|7|false"},
		{"two backfill copies in one second", false,
			site(event.Backfill, 901, "upsert", "later copy"), site(event.Backfill, 900, "upsert", "earlier copy"),
			"S1|later copy", "backfill|901|false"},
	}
	for _, tc := range cases {
		for _, order := range []string{"winner first", "winner second"} {
			f.truncate()
			if tc.existing {
				f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:01Z", "old"))
			}
			first, second := tc.b, tc.a
			if order == "winner second" {
				first, second = tc.a, tc.b
			}
			f.race("sites", first, second)
			if got := f.rows(`SELECT contract, description FROM schedulehub.sites`); got != tc.target {
				t.Errorf("%s, %s: target %q, want %q", tc.name, order, got, tc.target)
			}
			if got := f.rows(`SELECT source_stream, stream_seq, deleted FROM bridge.synced_records`); got != tc.ledger {
				t.Errorf("%s, %s: ledger %q, want %q", tc.name, order, got, tc.ledger)
			}
		}
	}

	// The same for a child parked twice at once: the parked row keeps the winner,
	// and the parents release it.
	for _, order := range []string{"winner first", "winner second"} {
		f.truncate()
		copyV := raceVersion{event.Backfill, 900, woEvent("WO1", r, "copy")}
		change := raceVersion{event.Realtime, 5, woEvent("WO1", r, "change")}
		first, second := change, copyV
		if order == "winner second" {
			first, second = copyV, change
		}
		f.race("work_orders", first, second)
		if got := f.rows(`SELECT source_stream, stream_seq FROM bridge.pending_children`); got != "realtime|5" {
			t.Errorf("parked, %s: %q, want realtime|5", order, got)
		}
		f.applyParents()
		if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders`); got != "WO1|change" {
			t.Errorf("released, %s: %q, want WO1|change", order, got)
		}
	}
}
