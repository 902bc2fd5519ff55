package store_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
)

// uidAt is a UUIDv7 of the time t, as SyncFlow makes them.
func uidAt(t *testing.T, at time.Time) uuid.UUID {
	t.Helper()
	u := uuid.Must(uuid.NewV7())
	ms := uint64(at.UnixMilli())
	for i := 0; i < 6; i++ {
		u[i] = byte(ms >> (40 - 8*i))
	}
	return u
}

func monthStart(t time.Time, back int) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC).AddDate(0, -back, 0)
}

// The months ahead exist; a row lands in its month's partition; several
// processes creating months at once create each once; a month whose rows
// already sit in the DEFAULT partition is left there and reported.
func TestMonthlyPartitionsAhead(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	partitions := func(table string) string {
		return f.rows(`SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'bridge.` + table + `'::regclass`)
	}
	for _, table := range []string{"sync_batches", "failed_records"} {
		got := partitions(table)
		for m := 0; m < 3; m++ {
			name := table + "_" + monthStart(now, -m).Format("2006_01")
			if !strings.Contains(got, name) {
				t.Errorf("%s: partition %s missing: %s", table, name, got)
			}
		}
		if !strings.Contains(got, table+"_default") {
			t.Errorf("%s: no default partition: %s", table, got)
		}
	}
	batch := uidAt(t, now)
	if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type) VALUES ($1, 'items', 'realtime')`, batch); err != nil {
		t.Fatal(err)
	}
	if got := f.rows(`SELECT tableoid::regclass::text FROM bridge.sync_batches WHERE uid = '` + batch.String() + `'`); got != "bridge.sync_batches_"+monthStart(now, 0).Format("2006_01") {
		t.Errorf("a batch of this month is in %s", got)
	}

	// Four processes make the months 6 to 8 ahead at once: each is made once.
	later := monthStart(now, -6)
	var wg sync.WaitGroup
	made := make([]int, 4)
	errs := make([]error, 4)
	for i := range made {
		wg.Add(1)
		go func() {
			defer wg.Done()
			made[i], errs[i] = f.st.EnsurePartitions(f.ctx, later)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if total := made[0] + made[1] + made[2] + made[3]; total != 6 {
		t.Errorf("four processes made %v partitions, want 6 in all (3 months of 2 tables)", made)
	}

	// A row of a month not made yet goes to the default partition; that month is
	// then not made (its rows would have to move), and the row is reported.
	far := monthStart(now, -12).Add(time.Hour)
	if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.failed_records (uid, entity_name, raw_bytes, stage_failed, error_message)
		VALUES ($1, 'items', 'x', 'decode', 'e')`, uidAt(t, far)); err != nil {
		t.Fatalf("a write with no partition of its month failed: %v", err)
	}
	if _, err := f.st.EnsurePartitions(f.ctx, far); err != nil {
		t.Fatal(err)
	}
	if got := partitions("failed_records"); strings.Contains(got, "failed_records_"+far.Format("2006_01")) {
		t.Errorf("made the month whose row is in the default partition: %s", got)
	}
	if !strings.Contains(partitions("sync_batches"), "sync_batches_"+far.Format("2006_01")) {
		t.Errorf("the same month of sync_batches (nothing stranded) was not made")
	}
	if stranded, err := f.st.StrandedRows(f.ctx); err != nil || stranded["failed_records"] != 1 {
		t.Errorf("stranded rows = %v, %v; want failed_records: 1", stranded, err)
	}
}

// Prune drops whole months past retention, dead letters before batches, and
// keeps a month that holds what is still needed, saying why. A dropped month is
// archived first and is gone from the catalog: a metadata operation, not a
// DELETE. Busy locks keep a month for the next prune; two prunes at once drop
// each month once.
func TestDropMonths(t *testing.T) {
	f := newFixture(t)
	ctx := f.ctx
	now := time.Now()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := f.conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`SELECT bridge.ensure_month_partitions(t, $1, 6) FROM unnest('{sync_batches,failed_records}'::text[]) t`, monthStart(now, 6))
	cutoff := monthStart(now, 1)
	longAgo := cutoff.AddDate(0, 0, -1)
	// month(6): batches and dead letters resolved long ago: both go.
	// month(5): an unresolved dead letter: its month stays, and the batch it references.
	// month(4): a dead letter resolved after the cutoff: it stays, and its batch.
	// month(3): a batch a parked child references: it stays; its dead letters go.
	// month(2): a batch a checkpoint references: it stays.
	addBatch := func(m int) uuid.UUID {
		uid := uidAt(t, monthStart(now, m).Add(time.Hour))
		exec(`INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, started_at, finished_at)
			VALUES ($1, 'items', 'realtime', 'completed', $2, $2)`, uid, monthStart(now, m).Add(time.Hour))
		return uid
	}
	addDead := func(m int, batch uuid.UUID, resolved *time.Time) {
		exec(`INSERT INTO bridge.failed_records (uid, batch_uid, entity_name, raw_bytes, stage_failed, error_message, resolved_at, created_at)
			VALUES ($1, $2, 'items', 'x', 'decode', 'e', $3, $4)`, uidAt(t, monthStart(now, m).Add(2*time.Hour)), batch, resolved, monthStart(now, m).Add(2*time.Hour))
	}
	for m := 6; m >= 2; m-- {
		b := addBatch(m)
		switch m {
		case 6, 3:
			addDead(m, b, &longAgo)
			addDead(m, b, &longAgo)
		case 5:
			addDead(m, b, nil)
		case 4:
			late := cutoff.Add(time.Hour)
			addDead(m, b, &late)
		}
		if m == 3 {
			exec(`INSERT INTO bridge.pending_children (uid, batch_uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key, child_payload, child_raw, child_rowversion, rowversion_ord, source_stream, stream_seq)
				VALUES (gen_random_uuid(), $1, 'work_orders', 'c', 'items', 'p', '{}', '{}', 'x', '1', 1, 'realtime', 1)`, b)
		}
		if m == 2 {
			exec(`INSERT INTO bridge.erp_sync_state (uid, entity_name, last_batch_uid) VALUES (gen_random_uuid(), 'items', $1)`, b)
		}
	}
	describe := func(months []storeMonth) string {
		var lines []string
		for _, m := range months {
			line := m.Table + " " + m.Start.Format("2006-01") + " " + map[bool]string{true: "kept: " + m.Kept, false: "dropped"}[m.Kept != ""]
			lines = append(lines, line)
		}
		return strings.Join(lines, "\n")
	}
	mon := func(m int) string { return monthStart(now, m).Format("2006-01") }
	want := strings.Join([]string{
		"failed_records " + mon(6) + " dropped",
		"failed_records " + mon(5) + " kept: it holds unresolved dead letters",
		"failed_records " + mon(4) + " kept: it holds dead letters resolved since the cutoff",
		"failed_records " + mon(3) + " dropped",
		"failed_records " + mon(2) + " dropped",
		"sync_batches " + mon(6) + " dropped",
		"sync_batches " + mon(5) + " kept: dead letters reference its batches",
		"sync_batches " + mon(4) + " kept: dead letters reference its batches",
		"sync_batches " + mon(3) + " kept: parked children reference its batches",
		"sync_batches " + mon(2) + " kept: a checkpoint references one of its batches",
	}, "\n")

	// A dry run drops nothing, and it cannot see that the dead letters of a month
	// it would drop stop referencing their batches.
	dry, err := f.st.DropMonths(ctx, cutoff, true, nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dryWant := strings.NewReplacer(
		"sync_batches "+mon(6)+" dropped", "sync_batches "+mon(6)+" kept: dead letters reference its batches",
		"sync_batches "+mon(3)+" kept: parked children reference its batches", "sync_batches "+mon(3)+" kept: dead letters reference its batches",
	).Replace(want)
	if got := describe(asMonths(dry)); got != dryWant {
		t.Errorf("dry run:\n%s\nwant\n%s", got, dryWant)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records`) + " " + f.rows(`SELECT count(*) FROM bridge.sync_batches`); got != "6 5" {
		t.Fatalf("the dry run changed rows: %s", got)
	}

	// Busy locks: a reader holding the table keeps every month, without an error.
	blocker, err := pgx.Connect(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close(ctx)
	tx, err := blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT count(*) FROM bridge.failed_records`); err != nil {
		t.Fatal(err)
	}
	busy, err := f.st.DropMonths(ctx, cutoff, false, nil, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range busy {
		if m.Table == "failed_records" && m.Kept == "" {
			t.Errorf("dropped %s %s while a reader held the table", m.Table, m.Start)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	archived := map[string]int{}
	a := archiveFunc{add: func(table string, row []byte) error {
		mu.Lock()
		defer mu.Unlock()
		archived[table]++
		return nil
	}}
	// Two prunes at once: each month goes once, and neither fails.
	var wg sync.WaitGroup
	results := make([][]storeMonth, 2)
	errs := make([]error, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms, err := f.st.DropMonths(ctx, cutoff, false, a, 5*time.Second)
			results[i], errs[i] = asMonths(ms), err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	dropped := map[string]int{}
	for _, r := range results {
		for _, m := range r {
			if m.Kept == "" {
				dropped[m.Table+" "+m.Start.Format("2006-01")]++
			}
		}
	}
	for _, line := range strings.Split(want, "\n") {
		if name, ok := strings.CutSuffix(line, " dropped"); ok && dropped[name] != 1 {
			t.Errorf("%s dropped %d times", name, dropped[name])
		}
	}
	if archived["failed_records"] != 4 || archived["sync_batches"] != 1 {
		t.Errorf("archived %v, want 4 dead letters and 1 batch", archived)
	}
	// Gone from the catalog, not emptied.
	if got := f.rows(`SELECT count(*) FROM pg_class WHERE relname IN ('failed_records_` + monthStart(now, 6).Format("2006_01") + `', 'sync_batches_` + monthStart(now, 6).Format("2006_01") + `')`); got != "0" {
		t.Errorf("%s dropped partitions are still tables", got)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records`) + " " + f.rows(`SELECT count(*) FROM bridge.sync_batches`); got != "2 4" {
		t.Errorf("left: %s, want 2 dead letters and 4 batches", got)
	}
	// What stays past retention is reported again by the next prune.
	again, err := f.st.DropMonths(ctx, cutoff, false, nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range again {
		if m.Kept == "" {
			t.Errorf("the second prune dropped %s %s", m.Table, m.Start)
		}
	}
}

// The claim table keeps "one unresolved dead letter per message" as the unique
// index did, whoever writes: a second unresolved dead letter of a message is
// refused, resolving or deleting the first frees the message.
func TestOneUnresolvedDeadLetterPerMessageClaim(t *testing.T) {
	f := newFixture(t)
	insert := func() (uuid.UUID, error) {
		uid := testUID()
		_, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.failed_records (uid, entity_name, raw_bytes, stage_failed, error_message, stream, stream_seq)
			VALUES ($1, 'items', 'x', 'decode', 'e', 'APISMITH_CDC', 7)`, uid)
		return uid, err
	}
	first, err := insert()
	if err != nil {
		t.Fatal(err)
	}
	var pgErr *pgconn.PgError
	if _, err := insert(); !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("a second unresolved dead letter of one message: %v", err)
	}
	if _, err := f.conn.Exec(f.ctx, `UPDATE bridge.failed_records SET resolved_at = now() WHERE uid = $1`, first); err != nil {
		t.Fatal(err)
	}
	second, err := insert()
	if err != nil {
		t.Fatalf("after resolving the first: %v", err)
	}
	// Un-resolving the first while the second is unresolved is refused too.
	if _, err := f.conn.Exec(f.ctx, `UPDATE bridge.failed_records SET resolved_at = NULL WHERE uid = $1`, first); !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Errorf("un-resolving a second unresolved dead letter of one message: %v", err)
	}
	if _, err := f.conn.Exec(f.ctx, `DELETE FROM bridge.failed_records WHERE uid = $1`, second); err != nil {
		t.Fatal(err)
	}
	if _, err := insert(); err != nil {
		t.Errorf("after deleting the second: %v", err)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_record_messages`); got != "1" {
		t.Errorf("%s claims, want 1", got)
	}
	// A TRUNCATE takes the claims with it (it must say CASCADE), so no claim is
	// left naming a dead letter that is gone, which would swallow the next one.
	if _, err := f.conn.Exec(f.ctx, `TRUNCATE bridge.failed_records`); err == nil {
		t.Error("TRUNCATE without CASCADE left the claims behind")
	}
	if _, err := f.conn.Exec(f.ctx, `TRUNCATE bridge.failed_records CASCADE`); err != nil {
		t.Fatal(err)
	}
	if _, err := insert(); err != nil {
		t.Errorf("after a TRUNCATE: %v", err)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.failed_records`) + f.rows(`SELECT count(*) FROM bridge.failed_record_messages`); got != "11" {
		t.Errorf("after a TRUNCATE and a new dead letter: %s dead letters and claims, want 1 and 1", got)
	}
}

// storeMonth is store.Month without its row count, for comparing.
type storeMonth struct {
	Table string
	Start time.Time
	Kept  string
}

func asMonths(ms []store.Month) []storeMonth {
	out := make([]storeMonth, len(ms))
	for i, m := range ms {
		out[i] = storeMonth{Table: m.Table, Start: m.Start, Kept: m.Kept}
	}
	return out
}

// Two writers failing one message at once: the second waits for the first's
// claim, then updates the dead letter the first wrote (which it can see, its
// write being a statement of its own), keeping the first attempt in the history.
func TestConcurrentFailuresOfOneMessage(t *testing.T) {
	f := newFixture(t)
	dead := func(reason string) []apply.DeadLetter {
		return []apply.DeadLetter{{
			Failure:  pipeline.Failure{Stage: pipeline.StageMapping, Entity: "sites", Err: errors.New(reason)},
			Delivery: pipeline.Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: 99, Data: []byte(`{"x":1}`)},
		}}
	}
	holding, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- f.st.InTx(f.ctx, func(tx apply.Tx) error {
			if err := tx.AddDeadLetters(f.ctx, nil, "oracle_ifs", dead("first attempt")); err != nil {
				return err
			}
			close(holding)
			<-release
			return nil
		})
	}()
	select {
	case <-holding:
	case err := <-first:
		t.Fatalf("the first writer: %v", err)
	}
	second := make(chan error, 1)
	go func() {
		second <- f.st.InTx(f.ctx, func(tx apply.Tx) error { return tx.AddDeadLetters(f.ctx, nil, "oracle_ifs", dead("second attempt")) })
	}()
	time.Sleep(200 * time.Millisecond) // the second is waiting for the first's claim
	close(release)
	if err := errors.Join(<-first, <-second); err != nil {
		t.Fatal(err)
	}
	got := f.rows(`SELECT count(*) || ' ' || min(error_message) || ' ' || min(history->0->>'error') FROM bridge.failed_records WHERE stream_seq = 99`)
	if got != "1 second attempt first attempt" {
		t.Errorf("dead letters of the message: %s, want one, with the second attempt and the first in its history", got)
	}
}
