package storetest

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/normalize"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/streams"
)

// Contract runs every case of the contract against a fresh, empty backend that
// open returns for the catalog cat (the shipped one, but that sites replace
// rather than merge, so that both kinds of upsert are covered). The memory store
// and the PostgreSQL store both run it: where they disagree, a case fails.
//
// The cases come in two kinds: the statements of apply.Tx and deadletter.Tx one
// by one (what each writes, refuses, returns and bounds), and the flows the core
// runs over them (parking, release, isolation, sweeps, retries), whose results
// the two stores must share.
func Contract(t *testing.T, open func(t *testing.T, cat *catalog.Catalog) Backend) {
	for _, c := range contract {
		t.Run(c.name, func(t *testing.T) {
			cat := contractCatalog(t)
			c.run(t, NewEnv(t, open(t, cat), cat, Policy))
		})
	}
}

// contractCatalog is the shipped catalog, with sites upserted by replace.
func contractCatalog(t *testing.T) *catalog.Catalog {
	t.Helper()
	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	const sites = "  sites:\n    key: [CONTRACT]\n"
	if !strings.Contains(string(data), sites) {
		t.Fatalf("the shipped catalog has no block %q", sites)
	}
	cat, err := catalog.Parse([]byte(strings.Replace(string(data), sites, sites+"    upsert: replace\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := cat.Entity("sites"); e.Upsert != catalog.UpsertReplace {
		t.Fatalf("sites: %+v", e)
	}
	return cat
}

var contract = []struct {
	name string
	run  func(*testing.T, *Env)
}{
	{"ledger/a version is written only where it supersedes", ledgerSupersedes},
	{"ledger/a key twice in one write is refused and aborts the transaction", ledgerKeyTwice},
	{"parked children and dead letters naming a batch that does not exist are refused", batchForeignKey},
	{"parked/one row per child, the newest version", parkOneRowPerChild},
	{"parked/release takes the children of applied parents, bounded", releaseBounded},
	{"parked/the sweeper's statements", sweeperStatements},
	{"dead letters/one unresolved per message", deadLetterPerMessage},
	{"dead letters/failing again keeps the history", failedAgain},
	{"dead letters/selection, due or chosen, bounded", selectDeadLetters},
	{"batches/counts add up and close", countBatches},
	{"targets/merge and replace, soft and hard deletes, rejected rows", targetWrites},
	{"targets/a write of target and ledger rows: the ledger only where it supersedes", writesWithLedger},
	{"targets/a write releases the children of the parents it wrote; a rollback puts them back", writeReleases},
	{"flow/a parking cascade three levels deep", flowCascade},
	{"flow/a bounded release leaves the rest due for the sweeper", flowBoundedRelease},
	{"flow/a row the target rejects fails alone", flowTargetRejects},
	{"flow/a row the bridge refuses while parking fails alone", flowParkingRefused},
	{"flow/a released child the bridge refuses fails alone, and its parent commits", flowReleasedChildRefused},
	{"flow/the sweeper waits, orphans, and the parent releases the orphan", flowSweepToOrphan},
	{"flow/the sweeper releases what came unnoticed", flowSweepReleases},
	{"flow/a retry fails again, then resolves", flowRetry},
	{"flow/a retry isolates a record that fails in an unforeseen way", flowRetryIsolates},
}

// siteLedgerRow is a ledger row of site key at version (ord, src, seq, hash).
func siteLedgerRow(key string, ord int64, src event.Source, seq uint64, hash string, deleted bool) apply.LedgerRow {
	op := event.OpUpsert
	if deleted {
		op = event.OpDelete
	}
	v := pipeline.Version{Ord: ord, Source: src, Seq: seq}
	if hash != "" {
		v.Hash = []byte(hash)
	}
	return apply.LedgerRow{Record: normalize.Record{Entity: "sites", Op: op, Key: []string{key}, BKHash: Hash(key),
		RowVersion: event.RowVersion{Ord: ord, Text: strconv.FormatInt(ord, 10)}}, Version: v, Deleted: deleted}
}

// parkRow prepares body of entity as the next message and parks it under its
// parent of entity parent.
func (e *Env) parkRow(t *testing.T, entity, body, parent string) apply.ParkRow {
	t.Helper()
	ds := e.Deliveries(entity, body)
	p := pipeline.Preparer{Catalog: e.Catalog}.Prepare(ds)
	if len(p.Candidates) != 1 {
		t.Fatalf("%s: %+v", body, p.Failures)
	}
	c := p.Candidates[0]
	for _, ref := range c.Record.Parents {
		if ref.Entity == parent {
			return apply.ParkRow{Child: c.Record, Version: c.Version, Parent: ref, Delivery: ds[0]}
		}
	}
	t.Fatalf("%s has no parent %s", body, parent)
	return apply.ParkRow{}
}

func (e *Env) park(t *testing.T, batch uuid.UUID, rows []apply.ParkRow, maxRetries int) (map[string]bool, error) {
	var accepted map[string]bool
	err := e.InTx(func(tx apply.Tx) (err error) {
		accepted, err = tx.Park(e.Ctx, batch, rows[0].Child.Entity, rows, time.Hour, maxRetries)
		return err
	})
	return accepted, err
}

func keysWritten(m map[string]bool) []string {
	var out []string
	for k, ok := range m {
		if ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func hashes(keys ...string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = Hash(k)
	}
	slices.Sort(out)
	return out
}

func ledgerSupersedes(t *testing.T, e *Env) {
	b := e.NewBatch(t, "sites")
	s1 := []string{Hash("S1")}
	steps := []struct {
		name    string
		row     apply.LedgerRow
		written bool
	}{
		{"a new key", siteLedgerRow("S1", 10, event.Realtime, 5, "a", false), true},
		{"an older rowversion", siteLedgerRow("S1", 9, event.Realtime, 9, "b", false), false},
		{"a backfill copy of the same rowversion", siteLedgerRow("S1", 10, event.Backfill, 99, "b", false), false},
		{"the same event and payload", siteLedgerRow("S1", 10, event.Realtime, 5, "a", false), false},
		{"the same event with another payload (a mapping changed)", siteLedgerRow("S1", 10, event.Realtime, 5, "b", false), true},
		{"a later message of the same rowversion", siteLedgerRow("S1", 10, event.Realtime, 6, "b", false), true},
		{"a backfill delete of a newer rowversion", siteLedgerRow("S1", 11, event.Backfill, 1, "", true), true},
		{"a realtime event of the delete's rowversion", siteLedgerRow("S1", 11, event.Realtime, 1, "c", false), true},
		{"an older realtime event", siteLedgerRow("S1", 10, event.Realtime, 50, "d", false), false},
	}
	want := steps[0].row
	for _, s := range steps {
		if s.written {
			want = s.row
		}
		var written map[string]bool
		var applied map[string]pipeline.Applied
		var present map[apply.Key]bool
		err := e.InTx(func(tx apply.Tx) (err error) {
			if written, err = tx.WriteLedger(e.Ctx, "sites", b.UID, []apply.LedgerRow{s.row}); err != nil {
				return err
			}
			parents := []apply.Key{{Entity: "sites", Hash: s1[0]}, {Entity: "sites", Hash: Hash("nowhere")}}
			var alone map[apply.Key]bool
			if alone, err = tx.ParentsPresent(e.Ctx, parents); err != nil {
				return err
			}
			if applied, present, err = tx.ReadLedger(e.Ctx, "sites", append(s1, Hash("nowhere")), parents); err != nil {
				return err
			}
			if !maps.Equal(alone, present) {
				t.Errorf("%s: ParentsPresent %v, with ReadLedger %v", s.name, alone, present)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if written[s1[0]] != s.written || len(written) > 1 {
			t.Errorf("%s: written %v, want %v", s.name, written, s.written)
		}
		got, ok := applied[s1[0]]
		if !ok || len(applied) != 1 {
			t.Fatalf("%s: ReadLedger returned %v", s.name, applied)
		}
		if got.Version.Ord != want.Version.Ord || got.Version.Source.Name != want.Version.Source.Name || got.Version.Seq != want.Version.Seq ||
			string(got.Version.Hash) != string(want.Version.Hash) || got.Deleted != want.Deleted {
			t.Errorf("%s: the ledger holds %+v, want %+v (deleted %v)", s.name, got, want.Version, want.Deleted)
		}
		if present[apply.Key{Entity: "sites", Hash: s1[0]}] == want.Deleted || len(present) > 1 {
			t.Errorf("%s: ParentsPresent %v with the site deleted=%v", s.name, present, want.Deleted)
		}
	}
	rows := e.LedgerRows(t)
	if len(rows) != 1 || rows[0].String() != `sites ["S1"] 11 realtime#1` {
		t.Errorf("ledger %v", rows)
	}
}

func ledgerKeyTwice(t *testing.T, e *Env) {
	b := e.NewBatch(t, "sites")
	twice := func(key string) []apply.LedgerRow {
		return []apply.LedgerRow{siteLedgerRow(key, 1, event.Realtime, 1, "a", false), siteLedgerRow(key, 2, event.Realtime, 2, "b", false)}
	}
	err := e.InTx(func(tx apply.Tx) error {
		if _, err := tx.WriteLedger(e.Ctx, "sites", b.UID, twice("S1")); !errors.Is(err, apply.ErrRowRejected) {
			t.Errorf("a new key twice in one write: %v, want a rejected row", err)
		}
		if _, _, err := tx.ReadLedger(e.Ctx, "sites", []string{Hash("S1")}, nil); err == nil {
			t.Error("a statement after a failed one succeeded; the transaction is aborted")
		}
		return nil
	})
	if err == nil {
		t.Error("an aborted transaction committed")
	}
	// A key twice that the statement does not write the first time is no error.
	if err := e.InTx(func(tx apply.Tx) error {
		if _, err := tx.WriteLedger(e.Ctx, "sites", b.UID, twice("S1")[:1]); err != nil {
			return err
		}
		written, err := tx.WriteLedger(e.Ctx, "sites", b.UID, []apply.LedgerRow{twice("S1")[0], twice("S1")[0]})
		if len(written) != 0 {
			t.Errorf("the same version twice: written %v", written)
		}
		return err
	}); err != nil {
		t.Fatalf("a key twice that the guard refuses both times: %v", err)
	}
	// A savepoint whose statement failed is rolled back and fails, even when its
	// function ignores the failure; the transaction goes on without it.
	err = e.InTx(func(tx apply.Tx) error {
		if err := tx.Savepoint(e.Ctx, func() error {
			_, _ = tx.WriteLedger(e.Ctx, "sites", b.UID, twice("S5"))
			return nil
		}); err == nil {
			t.Error("a savepoint whose statement failed was released")
		}
		return nil
	})
	if err != nil {
		t.Errorf("the transaction after a failed savepoint: %v", err)
	}
	// Under a savepoint, the transaction goes on without what the savepoint wrote.
	err = e.InTx(func(tx apply.Tx) error {
		err := tx.Savepoint(e.Ctx, func() error {
			if _, err := tx.WriteLedger(e.Ctx, "sites", b.UID, []apply.LedgerRow{siteLedgerRow("S2", 1, event.Realtime, 1, "a", false)}); err != nil {
				return err
			}
			_, err := tx.WriteLedger(e.Ctx, "sites", b.UID, twice("S4"))
			return err
		})
		if !errors.Is(err, apply.ErrRowRejected) {
			t.Errorf("the savepoint returned %v, want a rejected row", err)
		}
		_, err = tx.WriteLedger(e.Ctx, "sites", b.UID, []apply.LedgerRow{siteLedgerRow("S3", 1, event.Realtime, 1, "a", false)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range e.LedgerRows(t) {
		got = append(got, r.Key[0])
	}
	if slices.Sort(got); !slices.Equal(got, []string{"S1", "S3"}) {
		t.Errorf("ledger %v, want S1 and S3 (S2 and S4 were rolled back with their savepoint)", got)
	}
}

func batchForeignKey(t *testing.T, e *Env) {
	nowhere := uuid.Must(uuid.NewV7())
	child := e.parkRow(t, "work_centers", WorkCenter("S1", "WC1", 1, ""), "sites")
	dead := apply.DeadLetter{Failure: pipeline.Failure{Stage: pipeline.StageDecode, Entity: "sites", Err: errors.New("bad")},
		Delivery: e.Deliveries("sites", "{")[0]}
	for name, write := range map[string]func(apply.Tx) error{
		"parked": func(tx apply.Tx) error {
			_, err := tx.Park(e.Ctx, nowhere, "work_centers", []apply.ParkRow{child}, time.Hour, 3)
			return err
		},
		"dead letters": func(tx apply.Tx) error {
			return tx.AddDeadLetters(e.Ctx, &nowhere, "oracle_ifs", []apply.DeadLetter{dead})
		},
	} {
		if err := e.InTx(write); !errors.Is(err, apply.ErrRowRejected) {
			t.Errorf("%s: %v, want a rejected row", name, err)
		}
	}
	// Without a batch, a dead letter is written.
	if err := e.InTx(func(tx apply.Tx) error { return tx.AddDeadLetters(e.Ctx, nil, "oracle_ifs", []apply.DeadLetter{dead}) }); err != nil {
		t.Fatal(err)
	}
	if n := len(e.ParkedRows(t)); n != 0 || len(e.DeadLetterRows(t)) != 1 {
		t.Errorf("%d parked rows, %d dead letters, want 0 and 1", n, len(e.DeadLetterRows(t)))
	}
	// The ledger's batch is a hint, not a key: a ledger row outlives the batch
	// that wrote it (prune drops old months of batches), so one naming a batch
	// that is gone is written.
	if err := e.InTx(func(tx apply.Tx) error {
		_, err := tx.WriteLedger(e.Ctx, "sites", nowhere, []apply.LedgerRow{siteLedgerRow("S1", 1, event.Realtime, 1, "a", false)})
		return err
	}); err != nil {
		t.Errorf("a ledger row naming a batch that is gone: %v", err)
	}
	if n := len(e.LedgerRows(t)); n != 1 {
		t.Errorf("%d ledger rows, want 1", n)
	}
}

func parkOneRowPerChild(t *testing.T, e *Env) {
	b := e.NewBatch(t, "work_orders").UID
	wo1v5 := e.parkRow(t, "work_orders", WorkOrder("WO1", "S1", "P1", 5, "v5"), "sites")
	wo2v1 := e.parkRow(t, "work_orders", WorkOrder("WO2", "S1", "P1", 1, "v1"), "sites")
	wo1v9 := e.parkRow(t, "work_orders", WorkOrder("WO1", "S1", "P1", 9, "v9"), "items")
	wo1v7 := e.parkRow(t, "work_orders", WorkOrder("WO1", "S1", "P1", 7, "v7"), "sites")
	e.Source = event.Backfill
	wo2copy := e.parkRow(t, "work_orders", WorkOrder("WO2", "S1", "P1", 1, "copy"), "sites")
	e.Source = event.Realtime

	if got, err := e.park(t, b, []apply.ParkRow{wo1v5, wo2v1}, 3); err != nil || !slices.Equal(keysWritten(got), hashes("WO1", "WO2")) {
		t.Fatalf("parking two children: %v %v", got, err)
	}
	rows := e.ParkedRows(t)
	if len(rows) != 2 || rows[0].String() != `work_orders ["WO1"] waits for sites ["S1"] (2026-01-01T00:00:05Z, re-checked 0 of 3)` ||
		rows[0].Wait() != time.Hour || rows[0].Due || string(rows[0].Raw) != string(wo1v5.Delivery.Data) || rows[0].Seq != wo1v5.Version.Seq {
		t.Fatalf("parked %v (wait %v)", rows, rows[0].Wait())
	}
	uid := rows[0].UID
	if err := e.InDeadLetterTx(func(tx deadletter.Tx) error {
		return tx.WaitParked(e.Ctx, []uuid.UUID{uid}, []time.Duration{2 * time.Hour})
	}); err != nil {
		t.Fatal(err)
	}
	if rows := e.ParkedRows(t); rows[0].Retries != 1 || rows[0].Wait() != 2*time.Hour {
		t.Fatalf("after a re-check: %v (wait %v)", rows[0], rows[0].Wait())
	}
	// A newer version replaces the row: its parent and event, and its re-checks
	// start again; the row and its budget stay.
	if got, err := e.park(t, b, []apply.ParkRow{wo1v9}, 7); err != nil || !slices.Equal(keysWritten(got), hashes("WO1")) {
		t.Fatalf("a newer version: %v %v", got, err)
	}
	want := `work_orders ["WO1"] waits for items ["P1"] (2026-01-01T00:00:09Z, re-checked 0 of 3)`
	if rows := e.ParkedRows(t); rows[0].String() != want || rows[0].UID != uid || rows[0].Wait() != time.Hour || string(rows[0].Raw) != string(wo1v9.Delivery.Data) {
		t.Fatalf("after a newer version: %v (wait %v), want %s", rows[0], rows[0].Wait(), want)
	}
	for name, r := range map[string]apply.ParkRow{"an older version": wo1v7, "the same version again": wo1v9, "a backfill copy of the same rowversion": wo2copy} {
		if got, err := e.park(t, b, []apply.ParkRow{r}, 3); err != nil || len(keysWritten(got)) != 0 {
			t.Errorf("%s: %v %v, want refused", name, got, err)
		}
	}
	if rows := e.ParkedRows(t); len(rows) != 2 || rows[0].String() != want || !strings.Contains(string(rows[1].Raw), `"v1"`) {
		t.Errorf("after the refused versions: %v", rows)
	}
	// A child twice in one statement fails when the statement wrote it already;
	// twice refused by the version guard, it is no error.
	wo3 := e.parkRow(t, "work_orders", WorkOrder("WO3", "S1", "P1", 1, "new"), "sites")
	if _, err := e.park(t, b, []apply.ParkRow{wo3, wo3}, 3); !errors.Is(err, apply.ErrRowRejected) {
		t.Errorf("a new child twice in one statement: %v, want a rejected row", err)
	}
	if got, err := e.park(t, b, []apply.ParkRow{wo2v1, wo2v1}, 3); err != nil || len(keysWritten(got)) != 0 {
		t.Errorf("a parked version twice in one statement: %v %v, want both refused", got, err)
	}
}

func releaseBounded(t *testing.T, e *Env) {
	e.Apply(t, "sites", Site("S1", 1, ""), Site("S3", 1, ""))
	e.Apply(t, "sites", SiteDeleted("S3", 2))
	b := e.NewBatch(t, "work_centers").UID
	var s1 []apply.ParkRow
	for _, wc := range []string{"WC1", "WC2", "WC3", "WC4"} {
		s1 = append(s1, e.parkRow(t, "work_centers", WorkCenter("S1", wc, 1, ""), "sites"))
	}
	others := []apply.ParkRow{e.parkRow(t, "work_centers", WorkCenter("S2", "WC5", 1, ""), "sites"),
		e.parkRow(t, "work_centers", WorkCenter("S3", "WC6", 1, ""), "sites")}
	size := len(s1[0].Delivery.Data) // the same for every child
	if _, err := e.park(t, b, append(s1, others...), 3); err != nil {
		t.Fatal(err)
	}
	parents := []apply.Key{{Entity: "sites", Hash: Hash("S1")}, {Entity: "sites", Hash: Hash("S2")}, {Entity: "sites", Hash: Hash("S3")}}
	// Children wait for all three; only S1 is applied (S2 missing, S3 deleted).
	// A parent nothing waits for (S4, applied) is not releasable either.
	e.Apply(t, "sites", Site("S4", 1, ""))
	withS4 := append(slices.Clone(parents), apply.Key{Entity: "sites", Hash: Hash("S4")})
	if ready, err := e.ApplyStore().Releasable(e.Ctx, withS4); err != nil || !slices.Equal(ready, parents[:1]) {
		t.Errorf("Releasable %v %v, want S1 alone", ready, err)
	}
	take := func(limit, maxBytes int) ([]apply.Released, bool) {
		t.Helper()
		var items []apply.Released
		var more bool
		if err := e.InTx(func(tx apply.Tx) (err error) {
			items, more, err = tx.TakeReleased(e.Ctx, parents, limit, maxBytes)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return items, more
	}
	for i, s := range []struct {
		limit, maxBytes int
		want            []apply.ParkRow
		more            bool
	}{
		{10, 1, s1[:1], true},         // the byte bound: one child, at least
		{1, 1 << 20, s1[1:2], true},   // the row bound
		{10, size, s1[2:3], true},     // a child whose predecessors hold the bound stays
		{10, size + 1, s1[3:], false}, // the rest
		{10, 1 << 20, nil, false},     // nothing left of S1's; S2 is missing and S3 deleted
	} {
		items, more := take(s.limit, s.maxBytes)
		if len(items) != len(s.want) || more != s.more {
			t.Fatalf("take %d (limit %d, %d bytes): %d items, more %v; want %d, %v", i, s.limit, s.maxBytes, len(items), more, len(s.want), s.more)
		}
		for j, it := range items {
			w := s.want[j].Delivery
			d := it.Delivery
			if it.Orphan || string(d.Data) != string(w.Data) || d.StreamSeq != w.StreamSeq || d.Subject != w.Subject || d.Source.Name != w.Source.Name {
				t.Errorf("take %d: item %+v, want the event of %+v", i, it, w)
			}
		}
	}
	if err := e.InTx(func(tx apply.Tx) error { return tx.MarkDue(e.Ctx, parents[1:2]) }); err != nil {
		t.Fatal(err)
	}
	var due []string
	for _, r := range e.ParkedRows(t) {
		due = append(due, fmt.Sprintf("%s due %v", r.ChildKey, r.Due))
	}
	if got := strings.Join(due, ", "); got != "[S2 WC5] due true, [S3 WC6] due false" {
		t.Errorf("parked: %s", got)
	}
	if ready, err := e.ApplyStore().Releasable(e.Ctx, withS4); err != nil || len(ready) != 0 {
		t.Errorf("Releasable %v %v, want none (the parents of the children left are missing or deleted)", ready, err)
	}
	// No parents: nothing, and no error.
	if ready, err := e.ApplyStore().Releasable(e.Ctx, nil); err != nil || len(ready) != 0 {
		t.Errorf("Releasable of no parents: %v %v", ready, err)
	}
	if err := e.InTx(func(tx apply.Tx) error {
		items, more, err := tx.TakeReleased(e.Ctx, nil, 10, 1<<20)
		if len(items) != 0 || more {
			t.Errorf("TakeReleased of no parents: %v %v", items, more)
		}
		return err
	}); err != nil {
		t.Errorf("TakeReleased of no parents: %v", err)
	}
}

func sweeperStatements(t *testing.T, e *Env) {
	bodies := []string{WorkCenter("S1", "WC1", 1, "one"), WorkCenter("S1", "WC2", 1, "two"), WorkCenter("S1", "WC3", 1, "three")}
	if res := e.Apply(t, "work_centers", bodies...); res.Counts.Parked != 3 {
		t.Fatalf("%+v", res.Counts)
	}
	uids := map[string]uuid.UUID{}
	for _, r := range e.ParkedRows(t) {
		uids[r.ChildKey[1]] = r.UID
	}
	sel := func(s deadletter.ParkedSelection, limit int) []deadletter.Parked {
		t.Helper()
		var rows []deadletter.Parked
		if err := e.InDeadLetterTx(func(tx deadletter.Tx) (err error) {
			rows, err = tx.SelectParked(e.Ctx, s, limit)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return rows
	}
	if rows := sel(deadletter.ParkedSelection{}, 10); len(rows) != 0 {
		t.Fatalf("%d due before their time", len(rows))
	}
	e.MakeParkedDue(t)
	for _, s := range []struct {
		name  string
		sel   deadletter.ParkedSelection
		limit int
		want  int
	}{
		{"due", deadletter.ParkedSelection{}, 10, 3},
		{"due, bounded", deadletter.ParkedSelection{}, 2, 2},
		{"by uid, whatever the bound", deadletter.ParkedSelection{UIDs: []uuid.UUID{uids["WC2"], uuid.Must(uuid.NewV7())}}, 0, 1},
		{"all", deadletter.ParkedSelection{All: true}, 10, 3},
		{"all, bounded", deadletter.ParkedSelection{All: true}, 1, 1},
		{"expire", deadletter.ParkedSelection{Expire: true}, 10, 3},
		{"expire older than an hour", deadletter.ParkedSelection{Expire: true, OlderThan: time.Hour}, 10, 0},
	} {
		if rows := sel(s.sel, s.limit); len(rows) != s.want {
			t.Errorf("%s: %d rows, want %d", s.name, len(rows), s.want)
		}
	}
	byUID := sel(deadletter.ParkedSelection{UIDs: []uuid.UUID{uids["WC1"]}}, 10)
	if len(byUID) != 1 {
		t.Fatalf("%+v", byUID)
	}
	p := byUID[0]
	if p.Child != (apply.Key{Entity: "work_centers", Hash: Hash("S1", "WC1")}) || p.Parent != (apply.Key{Entity: "sites", Hash: Hash("S1")}) ||
		p.ParentKey != `["S1"]` || p.Retries != 0 || p.MaxRetries != 3 || p.Size != int64(len(bodies[0])) || p.Created.IsZero() {
		t.Errorf("parked row %+v", p)
	}
	var taken []apply.Released
	var children []deadletter.Parked
	var logged []apply.DeadLetter
	batch := e.NewBatch(t, "work_centers")
	if err := e.InDeadLetterTx(func(tx deadletter.Tx) (err error) {
		if err := tx.WaitParked(e.Ctx, []uuid.UUID{uids["WC3"]}, []time.Duration{3 * time.Hour}); err != nil {
			return err
		}
		if children, err = tx.ParkedChildren(e.Ctx, []apply.Key{{Entity: "work_centers", Hash: Hash("S1", "WC2")}, {Entity: "work_centers", Hash: Hash("S1", "WC9")}}); err != nil {
			return err
		}
		if taken, err = tx.TakeParked(e.Ctx, []uuid.UUID{uids["WC2"]}); err != nil {
			return err
		}
		logged, err = tx.OrphanParked(e.Ctx, batch, []deadletter.Orphan{{UID: uids["WC1"], DeadLetterUID: uuid.Must(uuid.NewV7()), Reason: "waited too long"}}, 5)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(children) != 1 || children[0].UID != uids["WC2"] {
		t.Errorf("ParkedChildren %+v", children)
	}
	if len(taken) != 1 || taken[0].UID != uids["WC2"] || string(taken[0].Delivery.Data) != bodies[1] || taken[0].Delivery.StreamSeq != 2 ||
		taken[0].Delivery.Subject != "apismith.cdc.work_centers" || taken[0].Delivery.Source.Name != "realtime" || taken[0].Orphan {
		t.Errorf("TakeParked %+v", taken)
	}
	if len(logged) != 1 || logged[0].Entity != "work_centers" || logged[0].Stage != pipeline.StageOrphan || logged[0].Err.Error() != "waited too long" ||
		logged[0].Delivery.Source.Stream != event.Realtime.Stream || logged[0].Delivery.StreamSeq != 1 {
		t.Errorf("OrphanParked returned %+v", logged)
	}
	rows := e.ParkedRows(t)
	if len(rows) != 1 || rows[0].UID != uids["WC3"] || rows[0].Retries != 1 || rows[0].Wait() != 3*time.Hour || rows[0].Due {
		t.Errorf("parked after the statements: %v", rows)
	}
	dead := e.DeadLetterRows(t)
	if len(dead) != 1 {
		t.Fatalf("dead letters %v", dead)
	}
	if d := dead[0]; d.Entity != "work_centers" || d.Stage != "orphan" || d.Error != "waited too long" || d.Parent != (apply.Key{Entity: "sites", Hash: Hash("S1")}) ||
		d.BKHash != Hash("S1", "WC1") || string(d.Raw) != bodies[0] || d.MaxRetries != 5 || d.NextAt != nil || d.Seq != 1 || d.Stream != event.Realtime.Stream || d.Resolved {
		t.Errorf("orphan %+v", d)
	}
	orphans := func(limit int) ([]apply.Released, bool) {
		t.Helper()
		var items []apply.Released
		var more bool
		if err := e.InDeadLetterTx(func(tx deadletter.Tx) (err error) {
			items, more, err = tx.TakeReleasableOrphans(e.Ctx, limit, 1<<20)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return items, more
	}
	if items, more := orphans(10); len(items) != 0 || more {
		t.Errorf("orphans of a missing parent: %+v %v", items, more)
	}
	s1 := []apply.Key{{Entity: "sites", Hash: Hash("S1")}}
	if ready, err := e.ApplyStore().Releasable(e.Ctx, s1); err != nil || len(ready) != 0 {
		t.Errorf("Releasable before the parent: %v %v", ready, err)
	}
	e.Unnoticed(t, "sites", Site("S1", 1, ""))
	if ready, err := e.ApplyStore().Releasable(e.Ctx, s1); err != nil || !slices.Equal(ready, s1) {
		t.Errorf("Releasable after the parent: %v %v", ready, err)
	}
	if items, more := orphans(10); len(items) != 1 || more || !items[0].Orphan || items[0].UID != dead[0].UID || string(items[0].Delivery.Data) != bodies[0] ||
		items[0].Delivery.StreamSeq != 1 {
		t.Errorf("releasable orphans: %+v %v", items, more)
	}
	if items, more := orphans(1); len(items) != 1 || !more {
		t.Errorf("releasable orphans, bounded: %d %v", len(items), more)
	}
	var items []apply.Released
	if err := e.InTx(func(tx apply.Tx) (err error) {
		items, _, err = tx.TakeReleased(e.Ctx, s1, 10, 1<<20)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || items[0].Orphan || items[0].UID != uids["WC3"] || !items[1].Orphan || items[1].UID != dead[0].UID {
		t.Errorf("TakeReleased: %+v, want WC3's row and WC1's orphan", items)
	}
	if rows := e.ParkedRows(t); len(rows) != 0 {
		t.Errorf("parked %v", rows)
	}
	if dead := e.DeadLetterRows(t); len(dead) != 1 || dead[0].Resolved {
		t.Errorf("a released orphan stays until the core resolves it: %v", dead)
	}
	// No child waits any more, the unresolved orphan still does.
	if ready, err := e.ApplyStore().Releasable(e.Ctx, s1); err != nil || !slices.Equal(ready, s1) {
		t.Errorf("Releasable with an orphan alone waiting: %v %v", ready, err)
	}
}

// deadLetter is a failure at stage of message seq of the sites stream, first
// retried after retry (none when zero).
func deadLetter(seq uint64, stage pipeline.Stage, retry time.Duration, body string) apply.DeadLetter {
	d := apply.DeadLetter{Failure: pipeline.Failure{Stage: stage, Entity: "sites", Err: errors.New(string(stage) + " failed")},
		Delivery: pipeline.Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: seq, Data: []byte(body)}, MaxRetries: 3}
	if retry > 0 {
		d.RetryAfter = &retry
	}
	return d
}

func (e *Env) addDeadLetters(t *testing.T, batch *uuid.UUID, dead ...apply.DeadLetter) {
	t.Helper()
	if err := e.InTx(func(tx apply.Tx) error { return tx.AddDeadLetters(e.Ctx, batch, "oracle_ifs", dead) }); err != nil {
		t.Fatal(err)
	}
}

func deadLetterPerMessage(t *testing.T, e *Env) {
	b := e.NewBatch(t, "sites").UID
	first := deadLetter(7, pipeline.StageMapping, time.Hour, `{"first":1}`)
	first.BKHash, first.Normalized = Hash("S1"), map[string]any{"CONTRACT": "S1"}
	e.addDeadLetters(t, &b, first)
	one := func(stage string, history int) DeadLetterEntry {
		t.Helper()
		rows := e.DeadLetterRows(t)
		if len(rows) != 1 || rows[0].Stage != stage || len(rows[0].History) != history || rows[0].Resolved {
			t.Fatalf("dead letters %v, want one at stage %s with %d earlier attempts", rows, stage, history)
		}
		return rows[0]
	}
	d := one("mapping", 0)
	if r, ok := d.Retry(); !ok || r != time.Hour || d.Retries != 0 || d.MaxRetries != 3 || d.Seq != 7 || d.Stream != event.Realtime.Stream ||
		string(d.Raw) != `{"first":1}` || d.BKHash != Hash("S1") || d.Entity != "sites" {
		t.Fatalf("the first dead letter: %+v", d)
	}
	next := *d.NextAt
	// Failing again: the new stage and reason, the old ones in the history, the
	// bytes and key kept when the new attempt has none, the next retry kept.
	e.addDeadLetters(t, nil, deadLetter(7, pipeline.StageWrite, 2*time.Hour, ""))
	d = one("write", 1)
	if d.History[0] != "mapping: mapping failed" || d.Error != "write failed" || string(d.Raw) != `{"first":1}` || d.BKHash != Hash("S1") ||
		d.NextAt == nil || !d.NextAt.Equal(next) {
		t.Fatalf("failed again: %+v (next retry was %v)", d, next)
	}
	// A stage not retried by itself drops the next retry; one that is sets it anew.
	e.addDeadLetters(t, &b, deadLetter(7, pipeline.StageDecode, 0, `{"second":2}`))
	if d = one("decode", 2); d.NextAt != nil || string(d.Raw) != `{"second":2}` {
		t.Fatalf("failed again at decode: %+v", d)
	}
	e.addDeadLetters(t, &b, deadLetter(7, pipeline.StageMapping, time.Hour, `{"second":2}`))
	if d = one("mapping", 3); d.NextAt == nil {
		t.Fatalf("failed again at mapping: %+v", d)
	} else if r, _ := d.Retry(); r != time.Hour {
		t.Fatalf("failed again at mapping: retried after %v, want 1h", r)
	}
	if err := e.InTx(func(tx apply.Tx) error { return tx.ResolveDeadLetters(e.Ctx, []uuid.UUID{d.UID}, "fixed by hand") }); err != nil {
		t.Fatal(err)
	}
	rows := e.DeadLetterRows(t)
	if len(rows) != 1 || !rows[0].Resolved || rows[0].Note != "fixed by hand" || rows[0].NextAt != nil ||
		rows[0].History[3] != "mapping: mapping failed => fixed by hand" {
		t.Fatalf("resolved: %+v", rows)
	}
	// An orphan names its parent; the message's next failure, of another kind,
	// does not.
	orphan := deadLetter(8, pipeline.StageOrphan, 0, "{}")
	orphan.Parent = &normalize.ParentRef{Entity: "items", BKHash: Hash("P1"), Key: []string{"P1"}}
	e.addDeadLetters(t, &b, orphan)
	if rows := e.DeadLetterRows(t); len(rows) != 2 || rows[1].Parent != (apply.Key{Entity: "items", Hash: Hash("P1")}) {
		t.Fatalf("an orphan: %v", rows)
	}
	e.addDeadLetters(t, &b, deadLetter(8, pipeline.StageWrite, time.Hour, "{}"))
	if rows := e.DeadLetterRows(t); len(rows) != 2 || rows[1].Parent != (apply.Key{}) || rows[1].Stage != "write" {
		t.Fatalf("an orphan that failed otherwise: %+v", rows[1])
	}
	// A resolved dead letter is history: the message's next failure is a new one.
	e.addDeadLetters(t, &b, deadLetter(7, pipeline.StageDecode, 0, `{"third":3}`))
	// Messages without an identity are each their own; of one message's failures
	// in one call, the last is kept.
	anonymous := deadLetter(0, pipeline.StageDecode, 0, "x")
	anonymous.Entity = ""
	e.addDeadLetters(t, &b, anonymous, deadLetter(0, pipeline.StageDecode, 0, "y"), deadLetter(9, pipeline.StageMapping, time.Hour, "z"),
		deadLetter(9, pipeline.StageWrite, time.Hour, "z"))
	var got []string
	for _, r := range e.DeadLetterRows(t) {
		got = append(got, fmt.Sprintf("%s #%d %s resolved=%v history=%d", r.Entity, r.Seq, r.Stage, r.Resolved, len(r.History)))
	}
	want := []string{"sites #7 mapping resolved=true history=4", "sites #7 decode resolved=false history=0", "sites #8 write resolved=false history=1",
		"sites #9 write resolved=false history=0",
		"unknown #0 decode resolved=false history=0", "sites #0 decode resolved=false history=0"}
	if !slices.Equal(got, want) {
		t.Errorf("dead letters:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func failedAgain(t *testing.T, e *Env) {
	e.addDeadLetters(t, nil, deadLetter(3, pipeline.StageMapping, time.Hour, "{}"))
	uid := e.DeadLetterRows(t)[0].UID
	four := 4 * time.Hour
	if err := e.InDeadLetterTx(func(tx deadletter.Tx) error {
		return tx.FailedAgain(e.Ctx, uid, pipeline.Failure{Stage: pipeline.StageWrite, Err: errors.New("target refused"), BKHash: Hash("S1")}, &four)
	}); err != nil {
		t.Fatal(err)
	}
	d := e.DeadLetterRows(t)[0]
	if r, ok := d.Retry(); !ok || r != four || d.Retries != 1 || d.Stage != "write" || d.Error != "target refused" || d.BKHash != Hash("S1") ||
		!slices.Equal(d.History, []string{"mapping: mapping failed"}) {
		t.Fatalf("failed again: %+v", d)
	}
	if err := e.InDeadLetterTx(func(tx deadletter.Tx) error {
		return tx.FailedAgain(e.Ctx, uid, pipeline.Failure{Stage: pipeline.StageDecode, Err: errors.New("no longer JSON")}, nil)
	}); err != nil {
		t.Fatal(err)
	}
	d = e.DeadLetterRows(t)[0]
	if d.NextAt != nil || d.Retries != 2 || d.BKHash != Hash("S1") || !slices.Equal(d.History, []string{"mapping: mapping failed", "write: target refused"}) {
		t.Fatalf("failed again without a next retry: %+v", d)
	}
}

func selectDeadLetters(t *testing.T, e *Env) {
	items := deadLetter(4, pipeline.StageDecode, 0, "{4}")
	items.Entity, items.Delivery.Subject = "items", "apismith.cdc.items"
	e.addDeadLetters(t, nil, deadLetter(1, pipeline.StageMapping, time.Hour, "{1}"), deadLetter(2, pipeline.StageMapping, time.Hour, "{2}"),
		deadLetter(3, pipeline.StageMapping, time.Hour, "{3}"), items, deadLetter(5, pipeline.StageMapping, time.Hour, "{5}"))
	uid := map[uint64]uuid.UUID{}
	for _, r := range e.DeadLetterRows(t) {
		uid[r.Seq] = r.UID
	}
	if err := e.InTx(func(tx apply.Tx) error { return tx.ResolveDeadLetters(e.Ctx, []uuid.UUID{uid[5]}, "done") }); err != nil {
		t.Fatal(err)
	}
	sel := func(s deadletter.Selection, limit, maxBytes int) ([]deadletter.Dead, bool) {
		t.Helper()
		var dead []deadletter.Dead
		var more bool
		if err := e.InDeadLetterTx(func(tx deadletter.Tx) (err error) {
			dead, more, err = tx.SelectDeadLetters(e.Ctx, s, limit, maxBytes)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return dead, more
	}
	if dead, more := sel(deadletter.Selection{Due: true}, 10, 1<<20); len(dead) != 0 || more {
		t.Fatalf("due before their time: %+v %v", dead, more)
	}
	e.MakeDeadLettersDue(t)
	for _, s := range []struct {
		name            string
		sel             deadletter.Selection
		limit, maxBytes int
		seqs            []uint64 // nil: only count
		n               int
		more            bool
	}{
		{"due", deadletter.Selection{Due: true}, 10, 1 << 20, []uint64{1, 2, 3}, 3, false},
		{"due, two at most", deadletter.Selection{Due: true}, 2, 1 << 20, nil, 2, true},
		{"due, a byte at most", deadletter.Selection{Due: true}, 10, 1, nil, 1, true},
		{"every unresolved one", deadletter.Selection{}, 10, 1 << 20, []uint64{1, 2, 3, 4}, 4, false},
		{"by entity", deadletter.Selection{Entity: "items"}, 10, 1 << 20, []uint64{4}, 1, false},
		{"by stage", deadletter.Selection{Stage: "mapping"}, 10, 1 << 20, []uint64{1, 2, 3}, 3, false},
		{"by uid", deadletter.Selection{UIDs: []uuid.UUID{uid[2], uid[5]}}, 10, 1 << 20, []uint64{2}, 1, false},
		{"by uid and entity", deadletter.Selection{UIDs: []uuid.UUID{uid[2], uid[4]}, Entity: "items"}, 10, 1 << 20, []uint64{4}, 1, false},
		{"three at most", deadletter.Selection{}, 3, 1 << 20, nil, 3, true},
	} {
		dead, more := sel(s.sel, s.limit, s.maxBytes)
		var seqs []uint64
		for _, d := range dead {
			seqs = append(seqs, d.Delivery.StreamSeq)
		}
		if len(dead) != s.n || more != s.more || s.seqs != nil && !slices.Equal(seqs, s.seqs) {
			t.Errorf("%s: %v more %v, want %d %v more %v", s.name, seqs, more, s.n, s.seqs, s.more)
		}
	}
	dead, _ := sel(deadletter.Selection{Entity: "items"}, 10, 1<<20)
	if d := dead[0]; d.UID != uid[4] || d.Entity != "items" || string(d.Delivery.Data) != "{4}" || d.Delivery.Subject != "apismith.cdc.items" ||
		d.Delivery.Source.Name != "realtime" || d.Retries != 0 || d.MaxRetries != 3 {
		t.Errorf("dead letter chosen %+v", d)
	}
}

func countBatches(t *testing.T, e *Env) {
	b := apply.BatchRow{UID: uuid.Must(uuid.NewV7())}
	count := func(b apply.BatchRow, c pipeline.Counts, close bool) error {
		return e.InTx(func(tx apply.Tx) error { return tx.CountBatch(e.Ctx, b, c, close) })
	}
	if err := count(b, pipeline.Counts{Fetched: 3, Normalized: 3, Mapped: 3, Inserted: 2, Parked: 1}, false); err != nil {
		t.Fatal(err)
	}
	if err := count(b, pipeline.Counts{Fetched: 1, Failed: 1, Released: 4}, true); err != nil {
		t.Fatal(err)
	}
	// Counts the table refuses fail the transaction (the counting may go with
	// the next statement, or the commit), and are never taken for a rejection
	// of the rows the transaction writes: the batch is held, not dead-lettered.
	if err := count(b, pipeline.Counts{Fetched: -1, Inserted: 1}, false); err == nil || errors.Is(err, apply.ErrRowRejected) {
		t.Errorf("a negative count: %v, want a failed transaction, not a rejected row", err)
	}
	if err := count(apply.BatchRow{UID: uuid.Must(uuid.NewV7()), Entity: "items", SyncType: "nightly"}, pipeline.Counts{}, false); err == nil || errors.Is(err, apply.ErrRowRejected) {
		t.Errorf("an unknown sync type: %v, want a failed transaction, not a rejected row", err)
	}
	backfill := apply.BatchRow{UID: uuid.Must(uuid.NewV7()), Entity: "items", SourceSystem: "erp2", SyncType: "background", Replica: "r2"}
	if err := count(backfill, pipeline.Counts{Fetched: 1, Unchanged: 1}, false); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range e.BatchRows(t) {
		got = append(got, fmt.Sprintf("%s %s %s %q %s %+v", r.Entity, r.SourceSystem, r.SyncType, r.Replica, r.Status, r.Counts))
	}
	want := []string{
		fmt.Sprintf("unknown oracle_ifs realtime \"\" completed %+v", pipeline.Counts{Fetched: 4, Normalized: 3, Mapped: 3, Inserted: 2, Parked: 1, Failed: 1, Released: 4}),
		fmt.Sprintf("items erp2 background \"r2\" running %+v", pipeline.Counts{Fetched: 1, Unchanged: 1}),
	}
	if !slices.Equal(got, want) {
		t.Errorf("batches:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func writesWithLedger(t *testing.T, e *Env) {
	b := e.NewBatch(t, "sites")
	upsert := func(key, desc string, ord int64, seq uint64, extra map[string]any) apply.WriteRow {
		row := map[string]any{"contract": key, "description": desc}
		maps.Copy(row, extra)
		return apply.WriteRow{LedgerRow: siteLedgerRow(key, ord, event.Realtime, seq, desc, false), Target: true, Row: row}
	}
	del := func(key string, ord int64, seq uint64) apply.WriteRow {
		return apply.WriteRow{LedgerRow: siteLedgerRow(key, ord, event.Realtime, seq, "", true), Target: true, Row: map[string]any{"contract": key}}
	}
	ledgerOnly := func(key, desc string, ord int64, seq uint64) apply.WriteRow {
		return apply.WriteRow{LedgerRow: siteLedgerRow(key, ord, event.Realtime, seq, desc, false)}
	}
	for _, s := range []struct {
		name    string
		rows    []apply.WriteRow
		written []string
		target  []string
		ledger  []string
	}{
		{"new keys, two sets of columns", []apply.WriteRow{upsert("S2", "b", 10, 2, map[string]any{"company": "c"}), upsert("S1", "a", 10, 1, nil), upsert("S3", "x", 10, 3, map[string]any{"company": "c"})},
			[]string{"S1", "S2", "S3"}, []string{"S1|a|NULL", "S2|b|c", "S3|x|c"},
			[]string{`sites ["S1"] 10 realtime#1`, `sites ["S2"] 10 realtime#2`, `sites ["S3"] 10 realtime#3`}},
		{"a newer version, a delete and a ledger row alone", []apply.WriteRow{upsert("S1", "a2", 11, 4, nil), del("S3", 11, 5), ledgerOnly("S2", "b", 11, 6)},
			[]string{"S1", "S2", "S3"}, []string{"S1|a2|NULL", "S2|b|c"},
			[]string{`sites ["S1"] 11 realtime#4`, `sites ["S2"] 11 realtime#6`, `sites ["S3"] 11 realtime#5 deleted`}},
		// The caller rolls back a target row whose ledger row lost.
		{"an older version: the target row is written, not the ledger row", []apply.WriteRow{upsert("S2", "old", 9, 9, nil), ledgerOnly("S1", "a2", 9, 10)},
			nil, []string{"S1|a2|NULL", "S2|old|NULL"},
			[]string{`sites ["S1"] 11 realtime#4`, `sites ["S2"] 11 realtime#6`, `sites ["S3"] 11 realtime#5 deleted`}},
		// A delete is done only where its ledger row is written.
		{"an older delete: neither row", []apply.WriteRow{del("S2", 8, 12)},
			nil, []string{"S1|a2|NULL", "S2|old|NULL"},
			[]string{`sites ["S1"] 11 realtime#4`, `sites ["S2"] 11 realtime#6`, `sites ["S3"] 11 realtime#5 deleted`}},
	} {
		var written map[string]bool
		if err := e.InTx(func(tx apply.Tx) error {
			w, err := tx.Write(e.Ctx, "sites", b.UID, s.rows, nil)
			written = w.Hashes
			return err
		}); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		var got []string
		for _, k := range []string{"S1", "S2", "S3"} {
			if written[Hash(k)] {
				got = append(got, k)
			}
		}
		if !slices.Equal(got, s.written) || len(written) != len(got) {
			t.Errorf("%s: written %v, want %v", s.name, written, s.written)
		}
		if got := e.TargetRows(t, "sites", "contract", "description", "company"); !slices.Equal(got, s.target) {
			t.Errorf("%s: target %v, want %v", s.name, got, s.target)
		}
		var ledger []string
		for _, r := range e.LedgerRows(t) {
			ledger = append(ledger, r.String())
		}
		slices.Sort(ledger)
		if !slices.Equal(ledger, s.ledger) {
			t.Errorf("%s: ledger %v, want %v", s.name, ledger, s.ledger)
		}
	}
	// A key twice in one write is refused, and aborts the transaction.
	err := e.InTx(func(tx apply.Tx) error {
		_, err := tx.Write(e.Ctx, "sites", b.UID, []apply.WriteRow{upsert("S4", "x", 1, 1, nil), upsert("S4", "y", 2, 2, nil)}, nil)
		if !errors.Is(err, apply.ErrRowRejected) {
			t.Errorf("a key twice in one write: %v, want a rejected row", err)
		}
		return err
	})
	if err == nil {
		t.Error("a write that failed committed")
	}
}

func writeReleases(t *testing.T, e *Env) {
	e.Apply(t, "sites", Site("S2", 1, ""))
	b := e.NewBatch(t, "work_centers").UID
	rows := []apply.ParkRow{e.parkRow(t, "work_centers", WorkCenter("S1", "WC1", 1, ""), "sites"),
		e.parkRow(t, "work_centers", WorkCenter("S1", "WC2", 1, ""), "sites"),
		e.parkRow(t, "work_centers", WorkCenter("S2", "WC3", 1, ""), "sites"),
		e.parkRow(t, "work_centers", WorkCenter("S3", "WC4", 1, ""), "sites")}
	if _, err := e.park(t, b, rows, 3); err != nil {
		t.Fatal(err)
	}
	sites := e.NewBatch(t, "sites").UID
	s1 := apply.WriteRow{LedgerRow: siteLedgerRow("S1", 10, event.Realtime, 1, "a", false), Target: true, Row: map[string]any{"contract": "S1", "description": "a"}}
	// S1 is written here, S2 was before, S3 is not: what waits for S1 and S2
	// is released, one child at most.
	release := &apply.ReleaseAfter{Parents: []apply.Key{{Entity: "sites", Hash: Hash("S1")}, {Entity: "sites", Hash: Hash("S2")}, {Entity: "sites", Hash: Hash("S3")}},
		Limit: 1, MaxBytes: 1 << 20}
	write := func(fail bool) apply.Written {
		t.Helper()
		var w apply.Written
		err := e.InTx(func(tx apply.Tx) error {
			return tx.Savepoint(e.Ctx, func() (err error) {
				if w, err = tx.Write(e.Ctx, "sites", sites, []apply.WriteRow{s1}, release); err == nil && fail {
					err = errors.New("the caller gives up")
				}
				return err
			})
		})
		if (err != nil) != fail {
			t.Fatalf("write (failing %v): %v", fail, err)
		}
		return w
	}
	parked := func() string {
		var got []string
		for _, r := range e.ParkedRows(t) {
			got = append(got, r.ChildKey[1])
		}
		slices.Sort(got)
		return strings.Join(got, " ")
	}
	if w := write(true); len(w.Released) != 1 || !w.More || !w.Hashes[Hash("S1")] {
		t.Errorf("the write that was rolled back: %+v, want S1 written and one child released, more left", w)
	}
	if got := parked(); got != "WC1 WC2 WC3 WC4" {
		t.Errorf("after a rollback, parked: %s, want every child back", got)
	}
	w := write(false)
	if len(w.Released) != 1 || !w.More || w.Released[0].Orphan || string(w.Released[0].Delivery.Data) != string(rows[0].Delivery.Data) {
		t.Errorf("released %+v (more %v), want WC1 alone, and more left", w.Released, w.More)
	}
	if got := parked(); got != "WC2 WC3 WC4" {
		t.Errorf("parked: %s, want WC2, WC3 and WC4 left", got)
	}
}

func targetWrites(t *testing.T, e *Env) {
	write := func(entity string, upserts, deletes []map[string]any) error {
		return e.InTx(func(tx apply.Tx) error { return tx.WriteTarget(e.Ctx, entity, TargetRows(upserts), deletes) })
	}
	for _, s := range []struct {
		name             string
		entity           string
		upserts, deletes []map[string]any
		want             []string
	}{
		{"insert", "items", []map[string]any{{"part_no": "P1", "description": "d1", "unit_meas": "pcs"}}, nil, []string{"P1|d1|pcs|false"}},
		{"merge keeps the columns not sent", "items", []map[string]any{{"part_no": "P1", "description": "d2"}}, nil, []string{"P1|d2|pcs|false"}},
		{"a soft delete marks", "items", nil, []map[string]any{{"part_no": "P1"}}, []string{"P1|d2|pcs|true"}},
		{"a soft delete of a marked row", "items", nil, []map[string]any{{"part_no": "P1"}, {"part_no": "P9"}}, []string{"P1|d2|pcs|true"}},
		{"an upsert clears the mark", "items", []map[string]any{{"part_no": "P1", "description": "d3", "unit_meas": nil}}, nil, []string{"P1|d3|NULL|false"}},
	} {
		if err := write(s.entity, s.upserts, s.deletes); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := e.TargetRows(t, "items", "part_no", "description", "unit_meas", "deleted_at?"); !slices.Equal(got, s.want) {
			t.Errorf("%s: %v, want %v", s.name, got, s.want)
		}
	}
	// Sites replace: a column the upsert does not carry goes back to its default.
	if err := write("sites", []map[string]any{{"contract": "S1", "description": "a"}, {"contract": "S2", "description": "b", "company": "c"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := write("sites", []map[string]any{{"contract": "S2", "description": "b"}}, nil); err != nil {
		t.Fatal(err)
	}
	if got := e.TargetRows(t, "sites", "contract", "description", "company"); !slices.Equal(got, []string{"S1|a|NULL", "S2|b|NULL"}) {
		t.Errorf("sites replaced: %v", got)
	}
	// An upsert of the key alone changes nothing (ON CONFLICT DO NOTHING), even
	// twice in one statement.
	wc := map[string]any{"contract": "S1", "work_center_no": "WC1", "description": "saw"}
	if err := write("work_centers", []map[string]any{wc}, nil); err != nil {
		t.Fatal(err)
	}
	if err := write("work_centers", []map[string]any{{"contract": "S1", "work_center_no": "WC1"}, {"contract": "S1", "work_center_no": "WC1"}}, nil); err != nil {
		t.Errorf("the key alone, twice: %v", err)
	}
	if got := e.TargetRows(t, "work_centers", "work_center_no", "description"); !slices.Equal(got, []string{"WC1|saw"}) {
		t.Errorf("work centers: %v", got)
	}
	if err := write("sites", nil, []map[string]any{{"contract": "S1"}}); err != nil {
		t.Fatal(err)
	}
	if err := write("sites", []map[string]any{{"contract": "S3", "description": "x"}, {"contract": "S3", "description": "y"}}, nil); !errors.Is(err, apply.ErrRowRejected) {
		t.Errorf("a key twice in one statement: %v, want a rejected row", err)
	}
	e.RejectTargetRow(t, "sites", "description", "bad")
	if err := write("sites", []map[string]any{{"contract": "S4", "description": "good"}, {"contract": "S5", "description": "bad"}}, nil); !errors.Is(err, apply.ErrRowRejected) {
		t.Errorf("a row the target refuses: %v, want a rejected row", err)
	}
	if got := e.TargetRows(t, "sites", "contract", "description"); !slices.Equal(got, []string{"S2|b"}) {
		t.Errorf("sites %v, want S2 alone", got)
	}
}

func flowCascade(t *testing.T, e *Env) {
	steps := []struct {
		entity   string
		events   []string
		outcomes []pipeline.Outcome
		released int64
		parked   []string
	}{
		{"work_order_operations", []string{Operation("WO1", 10, "S1", "WC1", 1, "cut"), Operation("WO1", 20, "S1", "WC1", 1, "weld")},
			[]pipeline.Outcome{pipeline.Parked, pipeline.Parked}, 0, []string{
				`work_order_operations ["WO1" "10"] waits for work_orders ["WO1"]`,
				`work_order_operations ["WO1" "20"] waits for work_orders ["WO1"]`}},
		{"work_orders", []string{WorkOrder("WO1", "S1", "P1", 1, "Released")}, []pipeline.Outcome{pipeline.Parked}, 0, []string{
			`work_order_operations ["WO1" "10"] waits for work_orders ["WO1"]`,
			`work_order_operations ["WO1" "20"] waits for work_orders ["WO1"]`,
			`work_orders ["WO1"] waits for sites ["S1"]`}},
		{"work_centers", []string{WorkCenter("S1", "WC1", 1, "saw")}, []pipeline.Outcome{pipeline.Parked}, 0, []string{
			`work_centers ["S1" "WC1"] waits for sites ["S1"]`,
			`work_order_operations ["WO1" "10"] waits for work_orders ["WO1"]`,
			`work_order_operations ["WO1" "20"] waits for work_orders ["WO1"]`,
			`work_orders ["WO1"] waits for sites ["S1"]`}},
		// The site releases the work center and the work order; the work order
		// waits again, for its item.
		{"sites", []string{Site("S1", 1, "plant")}, []pipeline.Outcome{pipeline.Inserted}, 2, []string{
			`work_order_operations ["WO1" "10"] waits for work_orders ["WO1"]`,
			`work_order_operations ["WO1" "20"] waits for work_orders ["WO1"]`,
			`work_orders ["WO1"] waits for items ["P1"]`}},
		// The item releases the work order, which releases both operations.
		{"items", []string{Item("P1", 1, "bolt")}, []pipeline.Outcome{pipeline.Inserted}, 3, nil},
	}
	for _, s := range steps {
		res := e.Apply(t, s.entity, s.events...)
		if !slices.Equal(res.Outcomes, s.outcomes) || res.Counts.Released != s.released {
			t.Fatalf("%s: outcomes %v released %d, want %v %d", s.entity, res.Outcomes, res.Counts.Released, s.outcomes, s.released)
		}
		var parked []string
		for _, p := range e.ParkedRows(t) {
			parked = append(parked, fmt.Sprintf("%s %q waits for %s %s", p.Child.Entity, p.ChildKey, p.Parent.Entity, p.ParentKey))
		}
		if !slices.Equal(parked, s.parked) {
			t.Fatalf("after %s, parked:\n%s\nwant\n%s", s.entity, strings.Join(parked, "\n"), strings.Join(s.parked, "\n"))
		}
	}
	for entity, want := range map[string][]string{
		"work_order_operations": {"WO1|10|cut", "WO1|20|weld"},
		"work_orders":           {"WO1|Released"},
		"work_centers":          {"S1|WC1|saw"},
	} {
		cols := map[string][]string{"work_order_operations": {"order_no", "operation_no", "description"}, "work_orders": {"order_no", "status"},
			"work_centers": {"contract", "work_center_no", "description"}}[entity]
		if got := e.TargetRows(t, entity, cols...); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", entity, got, want)
		}
	}
	if c := e.Committed(t); c.Fetched != 6 || c.Parked != 4 || c.Released != 5 || c.Inserted != 2 || !c.Balanced() {
		t.Errorf("committed counts %+v", c)
	}
	if n := len(e.LedgerRows(t)); n != 6 {
		t.Errorf("%d ledger rows, want 6", n)
	}
}

func flowBoundedRelease(t *testing.T, e *Env) {
	n := apply.ReleaseLimit + 1
	bodies := make([]string, n)
	for i := range bodies {
		bodies[i] = WorkCenter("S1", fmt.Sprintf("WC%05d", i), 1, "")
	}
	if res := e.Apply(t, "work_centers", bodies...); res.Counts.Parked != int64(n) {
		t.Fatalf("parking: %+v", res.Counts)
	}
	a, err := apply.NewApplier(NoRecheck{e.ApplyStore()}, e.Config.Stamp(apply.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.ApplyWith(a, "sites", e.Deliveries("sites", Site("S1", 1, "")))
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts.Released != apply.ReleaseLimit {
		t.Fatalf("the parent's transaction released %d, want %d", res.Counts.Released, apply.ReleaseLimit)
	}
	left := e.ParkedRows(t)
	if len(left) != 1 || !left[0].Due {
		t.Fatalf("left parked: %v, want one, due for the sweeper", left)
	}
	if sw := e.Sweep(t, deadletter.ParkedSelection{}); sw.Released != 1 || sw.Examined != 1 || sw.More {
		t.Fatalf("sweep %+v", sw)
	}
	if got := len(e.TargetRows(t, "work_centers", "work_center_no")); got != n || len(e.ParkedRows(t)) != 0 {
		t.Fatalf("%d work centers applied, %d parked", got, len(e.ParkedRows(t)))
	}
	if c := e.Committed(t); c.Released != int64(n) {
		t.Errorf("released counted %d, want %d", c.Released, n)
	}
}

func flowTargetRejects(t *testing.T, e *Env) {
	e.RejectTargetRow(t, "sites", "description", "bad")
	res := e.Apply(t, "sites", Site("S1", 1, "ok"), Site("S2", 1, "ok"), Site("S3", 1, "bad"), Site("S4", 1, "ok"), Site("S5", 1, "ok"))
	want := []pipeline.Outcome{pipeline.Inserted, pipeline.Inserted, pipeline.Failed, pipeline.Inserted, pipeline.Inserted}
	if !slices.Equal(res.Outcomes, want) || res.Counts.Inserted != 4 || res.Counts.Failed != 1 {
		t.Fatalf("outcomes %v counts %+v", res.Outcomes, res.Counts)
	}
	if got := e.TargetRows(t, "sites", "contract"); !slices.Equal(got, []string{"S1", "S2", "S4", "S5"}) {
		t.Errorf("target %v", got)
	}
	if n := len(e.LedgerRows(t)); n != 4 {
		t.Errorf("%d ledger rows, want 4 (the rejected row has none)", n)
	}
	dead := e.DeadLetterRows(t)
	if len(dead) != 1 || dead[0].Stage != "write" || dead[0].Seq != 3 || dead[0].BKHash != Hash("S3") || !strings.Contains(dead[0].Error, "rejected the row") {
		t.Errorf("dead letters %v", dead)
	}
	if r, ok := dead[0].Retry(); !ok || r != e.Config.Retry.FirstRetry {
		t.Errorf("the rejected row is retried after %v (%v), want %v", r, ok, e.Config.Retry.FirstRetry)
	}
}

func flowParkingRefused(t *testing.T, e *Env) {
	e.BreakParking(t, Hash("WO2"), true)
	res := e.Apply(t, "work_orders", WorkOrder("WO1", "S1", "P1", 1, "a"), WorkOrder("WO2", "S1", "P1", 1, "b"), WorkOrder("WO3", "S1", "P1", 1, "c"))
	if want := []pipeline.Outcome{pipeline.Parked, pipeline.Failed, pipeline.Parked}; !slices.Equal(res.Outcomes, want) {
		t.Fatalf("outcomes %v, want %v", res.Outcomes, want)
	}
	if dead := e.DeadLetterRows(t); len(dead) != 1 || dead[0].Stage != "write" || dead[0].BKHash != Hash("WO2") || !strings.Contains(dead[0].Error, "injected failure") {
		t.Errorf("dead letters %v", dead)
	}
	if n := len(e.ParkedRows(t)); n != 2 {
		t.Errorf("%d parked, want 2", n)
	}
}

func flowReleasedChildRefused(t *testing.T, e *Env) {
	e.Apply(t, "work_orders", WorkOrder("WO1", "S1", "P1", 1, "a"))
	e.BreakParking(t, Hash("WO1"), true)
	res := e.Apply(t, "sites", Site("S1", 1, "plant"), Site("S2", 1, "depot"))
	if want := []pipeline.Outcome{pipeline.Inserted, pipeline.Inserted}; !slices.Equal(res.Outcomes, want) || res.Counts.Released != 1 {
		t.Fatalf("outcomes %v released %d, want %v and 1", res.Outcomes, res.Counts.Released, want)
	}
	dead := e.DeadLetterRows(t)
	if len(dead) != 1 || dead[0].Entity != "work_orders" || dead[0].Stage != "write" || dead[0].BKHash != Hash("WO1") || !strings.Contains(dead[0].Error, "injected failure") {
		t.Errorf("dead letters %v", dead)
	}
	if n := len(e.ParkedRows(t)); n != 0 {
		t.Errorf("%d parked, want none (the child is a dead letter now)", n)
	}
	if got := e.TargetRows(t, "sites", "contract"); !slices.Equal(got, []string{"S1", "S2"}) {
		t.Errorf("sites %v", got)
	}
}

func flowSweepToOrphan(t *testing.T, e *Env) {
	e.Apply(t, "sites", Site("S1", 1, ""))
	e.Apply(t, "work_orders", WorkOrder("WO1", "S1", "P1", 1, "waiting"))
	for retry := 1; retry <= 2; retry++ {
		e.MakeParkedDue(t)
		if sw := e.Sweep(t, deadletter.ParkedSelection{}); sw.Examined != 1 || sw.Waiting != 1 {
			t.Fatalf("sweep %d: %+v", retry, sw)
		}
		p := e.ParkedRows(t)
		if len(p) != 1 || p[0].Retries != retry || p[0].Wait() != e.Config.Park.Delay(retry) || p[0].Due {
			t.Fatalf("after sweep %d: %v (wait %v)", retry, p, p[0].Wait())
		}
	}
	e.MakeParkedDue(t)
	if sw := e.Sweep(t, deadletter.ParkedSelection{}); sw.Orphaned != 1 || sw.Waiting != 0 {
		t.Fatalf("the last sweep: %+v", sw)
	}
	if p := e.ParkedRows(t); len(p) != 0 {
		t.Fatalf("parked %v", p)
	}
	dead := e.DeadLetterRows(t)
	if len(dead) != 1 || dead[0].Stage != "orphan" || dead[0].Parent != (apply.Key{Entity: "items", Hash: Hash("P1")}) || dead[0].NextAt != nil ||
		!strings.Contains(dead[0].Error, `parent items ["P1"] was never applied`) || !strings.Contains(dead[0].Error, "re-checked 2 times") ||
		!strings.Contains(string(dead[0].Raw), `"waiting"`) {
		t.Fatalf("orphan %v", dead)
	}
	var sweeps pipeline.Counts
	for _, b := range e.BatchRows(t) {
		if b.Status == "completed" {
			sweeps.Merge(b.Counts)
		}
	}
	if sweeps.Fetched != 3 || sweeps.Parked != 2 || sweeps.Failed != 1 {
		t.Errorf("the sweeps counted %+v, want 3 fetched, 2 parked, 1 failed", sweeps)
	}
	if res := e.Apply(t, "items", Item("P1", 1, "")); res.Counts.Released != 1 {
		t.Fatalf("item: %+v", res.Counts)
	}
	if got := e.TargetRows(t, "work_orders", "order_no", "status"); !slices.Equal(got, []string{"WO1|waiting"}) {
		t.Errorf("work orders %v", got)
	}
	if dead := e.DeadLetterRows(t); len(dead) != 1 || !dead[0].Resolved || dead[0].Note != "released: the parent it waited for was applied" {
		t.Errorf("the orphan after its parent: %v", dead)
	}
}

func flowSweepReleases(t *testing.T, e *Env) {
	e.Apply(t, "work_centers", WorkCenter("S1", "WC1", 1, "one"))
	e.Unnoticed(t, "sites", Site("S1", 1, ""))
	if sw := e.Sweep(t, deadletter.ParkedSelection{All: true}); sw.Released != 1 || sw.Examined != 1 {
		t.Fatalf("a manual release: %+v", sw)
	}
	// An orphan whose parent is applied with nothing to release it: the sweeper's
	// own round does.
	e.Apply(t, "work_centers", WorkCenter("S2", "WC2", 1, "two"))
	if sw := e.Sweep(t, deadletter.ParkedSelection{Expire: true}); sw.Orphaned != 1 {
		t.Fatalf("expire: %+v", sw)
	}
	e.Unnoticed(t, "sites", Site("S2", 1, ""))
	if sw := e.Sweep(t, deadletter.ParkedSelection{}); sw.Released != 1 || sw.Examined != 1 {
		t.Fatalf("the sweeper's round: %+v", sw)
	}
	if got := e.TargetRows(t, "work_centers", "work_center_no", "description"); !slices.Equal(got, []string{"WC1|one", "WC2|two"}) {
		t.Errorf("work centers %v", got)
	}
	if dead := e.DeadLetterRows(t); len(dead) != 1 || !dead[0].Resolved {
		t.Errorf("dead letters %v", dead)
	}
	if c := e.Committed(t); !c.Balanced() || c.Released != 2 {
		t.Errorf("counts %+v", c)
	}
}

func flowRetry(t *testing.T, e *Env) {
	broken, err := mapping.Compile([]mapping.Rule{{Entity: "sites", SourceField: "DESCRIPTION", TargetField: "description", Transformation: "integer"}})
	if err != nil {
		t.Fatal(err)
	}
	e.Rules = broken
	if res := e.Apply(t, "sites", Site("S1", 1, "one"), Site("S2", 1, "two")); res.Counts.Failed != 2 {
		t.Fatalf("%+v", res.Counts)
	}
	for _, d := range e.DeadLetterRows(t) {
		if r, ok := d.Retry(); d.Stage != "mapping" || !ok || r != e.Config.Retry.FirstRetry {
			t.Fatalf("dead letter %v, retried after %v", d, r)
		}
	}
	if r := e.Retry(t, deadletter.Selection{Due: true}); r.Retried != 0 {
		t.Fatalf("retried before their time: %+v", r)
	}
	e.MakeDeadLettersDue(t)
	if r := e.Retry(t, deadletter.Selection{Due: true}); r.Retried != 2 || r.FailedAgain != 2 || r.More {
		t.Fatalf("with the rule still broken: %+v", r)
	}
	for _, d := range e.DeadLetterRows(t) {
		if r, _ := d.Retry(); d.Retries != 1 || len(d.History) != 1 || !strings.HasPrefix(d.History[0], "mapping: ") || r != e.Config.Retry.Delay(1) {
			t.Fatalf("failed again: %v (retried after %v)", d, r)
		}
	}
	e.Rules = nil
	e.MakeDeadLettersDue(t)
	if r := e.Retry(t, deadletter.Selection{Due: true}); r.Resolved != 2 || r.FailedAgain != 0 {
		t.Fatalf("with the rule fixed: %+v", r)
	}
	for _, d := range e.DeadLetterRows(t) {
		if !d.Resolved || d.Note != "retried: inserted" || d.NextAt != nil {
			t.Errorf("resolved: %v", d)
		}
	}
	if got := e.TargetRows(t, "sites", "contract", "description"); !slices.Equal(got, []string{"S1|one", "S2|two"}) {
		t.Errorf("sites %v", got)
	}
}

func flowRetryIsolates(t *testing.T, e *Env) {
	broken, err := mapping.Compile([]mapping.Rule{{Entity: "work_orders", SourceField: "STATUS", TargetField: "status", Transformation: "integer"}})
	if err != nil {
		t.Fatal(err)
	}
	e.Rules = broken
	e.Apply(t, "work_orders", WorkOrder("WO1", "S1", "P1", 1, "a"), WorkOrder("WO2", "S1", "P1", 1, "b"), WorkOrder("WO3", "S1", "P1", 1, "c"))
	e.MakeDeadLettersDue(t)
	e.BreakParking(t, Hash("WO2"), false)
	e.Rules = nil
	if r := e.Retry(t, deadletter.Selection{Due: true}); r.Retried != 3 || r.Resolved != 2 || r.FailedAgain != 1 {
		t.Fatalf("%+v", r)
	}
	var open []DeadLetterEntry
	for _, d := range e.DeadLetterRows(t) {
		if !d.Resolved {
			open = append(open, d)
		} else if d.Note != "retried: parked" {
			t.Errorf("resolved %v", d)
		}
	}
	if len(open) != 1 || open[0].BKHash != Hash("WO2") || open[0].Stage != "write" || open[0].Retries != 1 || !strings.Contains(open[0].Error, "injected failure") {
		t.Fatalf("the record to blame: %v", open)
	}
	if r, ok := open[0].Retry(); !ok || r != e.Config.Retry.Delay(1) {
		t.Errorf("its next retry after %v, want %v", r, e.Config.Retry.Delay(1))
	}
	if n := len(e.ParkedRows(t)); n != 2 {
		t.Errorf("%d parked, want 2 (the others wait for their parents)", n)
	}
}
