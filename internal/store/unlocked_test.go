package store_test

import (
	"fmt"
	"testing"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/storetest"
)

// holdRows locks the rows lock (a SELECT ... FOR UPDATE) selects, in a
// transaction of the test's, until release: a batch that writes one of them
// waits there, after it read the ledger and before it writes any ledger row.
func (f *fixture) holdRows(lock string, args ...any) (release func()) {
	f.t.Helper()
	hold, err := f.conn.Begin(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := hold.Exec(f.ctx, lock, args...); err != nil {
		f.t.Fatal(err)
	}
	return func() {
		if err := hold.Commit(f.ctx); err != nil {
			f.t.Fatal(err)
		}
	}
}

// keyBefore returns a key named prefix-N whose hash sorts before key's: a batch
// writes it first, so that a batch held on it has taken nothing of key yet.
func keyBefore(prefix, key string) string {
	for i := 0; ; i++ {
		if k := fmt.Sprintf("%s-%d", prefix, i); storetest.Hash(k) < storetest.Hash(key) {
			return k
		}
	}
}

// A decision that once wrote the ledger alone (Unchanged: a newer version with
// the payload the ledger read shows; or a delete over a tombstone) is made from
// the unlocked read, and another transaction B may commit a version in between
// (newer than what A read, older than A's). A writes the target row as well, so
// it meets B's in the one lock order and ends in the state the version order
// gives. A's batch waits (on a row of another key the test holds, that sorts
// before S1 so that A has locked nothing of S1 yet) after its read and before
// its writes, while B commits.
func TestADecisionOnAnOvertakenReadWritesTheTarget(t *testing.T) {
	f := newFixture(t)
	const t1, t2, t3 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"
	cases := []struct {
		name   string
		setup  []string // applied first
		a      string   // A's event of S1, batched with an upsert of S0 (held)
		b      raceVersion
		target string // sites S1 afterwards, as the version order gives it
		ledger string
	}{
		{"unchanged upsert vs a change in between",
			[]string{siteEvent("upsert", "S1", t1, "P")},
			siteEvent("upsert", "S1", t3, "P"),
			raceVersion{event.Realtime, 50, siteEvent("upsert", "S1", t2, "Q")},
			"S1|P", "realtime|101|false"},
		{"delete over a tombstone vs a re-insert in between",
			[]string{siteEvent("upsert", "S1", t1, "P"), siteEvent("delete", "S1", "2026-01-01T00:00:01.5Z", "")},
			siteEvent("delete", "S1", t3, ""),
			raceVersion{event.Realtime, 50, siteEvent("upsert", "S1", t2, "Q")},
			"", "realtime|101|true"},
		{"unchanged upsert vs a delete in between",
			[]string{siteEvent("upsert", "S1", t1, "P")},
			siteEvent("upsert", "S1", t3, "P"),
			raceVersion{event.Realtime, 50, siteEvent("delete", "S1", t2, "")},
			"S1|P", "realtime|101|false"},
	}
	held := keyBefore("S0", "S1")
	for _, tc := range cases {
		f.truncate()
		for _, s := range tc.setup {
			f.apply("sites", nil, s)
		}
		f.apply("sites", nil, siteEvent("upsert", held, t1, "x"))
		bA, bB := testUID(), testUID()
		if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type) VALUES ($1, 'sites', 'realtime'), ($2, 'sites', 'realtime')`, bA, bB); err != nil {
			t.Fatal(err)
		}
		release := f.holdRows(`SELECT 1 FROM schedulehub.sites WHERE contract = $1 FOR UPDATE`, held)
		doneA := f.applyManyAsync("sites", 100, bA, siteEvent("upsert", held, t3, "y"), tc.a)
		f.waitForLockWaits(1) // A read the ledger and waits for the held key's target row
		if err := <-f.applyAsync("sites", tc.b, bB); err != nil {
			t.Fatalf("%s: B: %v", tc.name, err)
		}
		release()
		if err := <-doneA; err != nil {
			t.Fatalf("%s: A: %v", tc.name, err)
		}
		if err := f.st.FlushCheckpoints(f.ctx); err != nil {
			t.Fatal(err)
		}
		target := f.rows(`SELECT contract, description FROM schedulehub.sites WHERE contract = 'S1'`)
		ledger := f.rows(`SELECT source_stream, stream_seq, deleted FROM bridge.synced_records r WHERE business_key::text LIKE '%S1%'`)
		if target != tc.target || ledger != tc.ledger {
			t.Errorf("%s: target %q ledger %q, want target %q ledger %q", tc.name, target, ledger, tc.target, tc.ledger)
		}
		if got := f.rows(`SELECT r.target_hash = int8send(hashtextextended(rtrim((t.*)::text, ',)'), 0)) FROM bridge.synced_records r JOIN schedulehub.sites t ON r.target_key = ROW(t.contract)::text WHERE t.contract = 'S1'`); tc.target != "" && got != "true" {
			t.Errorf("%s: the ledger's target hash matches the target row: %q, want true", tc.name, got)
		}
	}
}
