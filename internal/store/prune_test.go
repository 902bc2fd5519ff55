package store_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPrune(t *testing.T) {
	f := newFixture(t)
	exec := func(sql string) {
		t.Helper()
		if _, err := f.conn.Exec(f.ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, started_at, finished_at) VALUES
		('00000000-0000-7000-8000-000000000001', 'sites', 'realtime', 'completed', now() - interval '100 days', now() - interval '100 days'),
		('00000000-0000-7000-8000-000000000002', 'sites', 'realtime', 'completed', now() - interval '100 days', now() - interval '100 days'),
		('00000000-0000-7000-8000-000000000003', 'sites', 'realtime', 'completed', now() - interval '100 days', now() - interval '100 days'),
		('00000000-0000-7000-8000-000000000004', 'sites', 'realtime', 'completed', now() - interval '1 day', now() - interval '1 day')`)
	exec(`INSERT INTO bridge.failed_records (uid, batch_uid, entity_name, raw_bytes, stage_failed, error_message, resolved_at) VALUES
		(gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 'sites', 'x', 'decode', 'old and resolved', now() - interval '95 days'),
		(gen_random_uuid(), '00000000-0000-7000-8000-000000000002', 'sites', 'x', 'decode', 'old, unresolved', NULL)`)
	exec(`INSERT INTO bridge.erp_sync_state (uid, entity_name, last_batch_uid) VALUES (gen_random_uuid(), 'sites', '00000000-0000-7000-8000-000000000003')`)

	dry, err := f.st.Prune(f.ctx, time.Now().Add(-90*24*time.Hour), true, nil)
	if err != nil || dry.DeadLetters != 1 || dry.Batches != 1 {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	var archived []string
	res, err := f.st.Prune(f.ctx, time.Now().Add(-90*24*time.Hour), false, archiveFunc{
		add: func(table string, row []byte) error {
			archived = append(archived, table+" "+string(row))
			return nil
		},
	})
	if err != nil || res.DeadLetters != 1 || res.Batches != 1 {
		t.Fatalf("prune: %+v %v", res, err)
	}
	// Kept: the batch of an unresolved dead letter, the checkpoint's batch, the recent one.
	if got := f.rows(`SELECT right(uid::text, 1) FROM bridge.sync_batches ORDER BY uid`); got != "2\n3\n4" {
		t.Errorf("batches left: %s", got)
	}
	if got := f.rows(`SELECT error_message FROM bridge.failed_records`); got != "old, unresolved" {
		t.Errorf("dead letters left: %s", got)
	}
	if len(archived) != 2 || !strings.Contains(archived[0], `failed_records {"uid"`) || !strings.Contains(archived[1], "sync_batches") {
		t.Errorf("archive: %v", archived)
	}
}

type archiveFunc struct {
	add  func(table string, row []byte) error
	sync func() error
}

func (a archiveFunc) Add(table string, row []byte) error { return a.add(table, row) }

func (a archiveFunc) Sync() error {
	if a.sync == nil {
		return nil
	}
	return a.sync()
}

// A row is deleted only once the archive holds it: an archive that cannot write
// or cannot sync (a full disk) leaves every row where it was.
func TestPruneKeepsRowsTheArchiveCouldNotTake(t *testing.T) {
	f := newFixture(t)
	if _, err := f.conn.Exec(f.ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, started_at, finished_at)
		SELECT gen_random_uuid(), 'sites', 'realtime', 'completed', now() - interval '100 days', now() - interval '100 days' FROM generate_series(1, 1500)`); err != nil {
		t.Fatal(err)
	}
	full := errors.New("no space left on device")
	for name, a := range map[string]archiveFunc{
		"write fails": {add: func(string, []byte) error { return full }},
		"sync fails":  {add: func(string, []byte) error { return nil }, sync: func() error { return full }},
	} {
		if _, err := f.st.Prune(f.ctx, time.Now().Add(-90*24*time.Hour), false, a); !errors.Is(err, full) {
			t.Errorf("%s: %v", name, err)
		}
		if got := f.rows(`SELECT count(*) FROM bridge.sync_batches`); got != "1500" {
			t.Errorf("%s: %s batches left, want all 1500", name, got)
		}
	}
	// The second chunk fails: the first, archived and synced, is gone; the rest stays.
	syncs := 0
	_, err := f.st.Prune(f.ctx, time.Now().Add(-90*24*time.Hour), false, archiveFunc{
		add: func(string, []byte) error { return nil },
		sync: func() error {
			if syncs++; syncs > 1 {
				return full
			}
			return nil
		},
	})
	if !errors.Is(err, full) || f.rows(`SELECT count(*) FROM bridge.sync_batches`) != "500" {
		t.Errorf("after a failure in the second chunk: %v, %s left", err, f.rows(`SELECT count(*) FROM bridge.sync_batches`))
	}
}

// Tombstones older than the cutoff go, a thousand at a time in key order, except
// those of keys an unresolved dead letter or a parked child may still bring an
// older version of; live rows and young tombstones stay. Two prunes at once
// remove each tombstone once.
func TestPruneTombstones(t *testing.T) {
	f := newFixture(t)
	exec := func(sql string) {
		t.Helper()
		if _, err := f.conn.Exec(f.ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	// 2,500 old tombstones over two entities, 10 young ones, 10 old live rows.
	exec(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, deleted, updated_at)
		SELECT CASE WHEN i % 2 = 0 THEN 'items' ELSE 'sites' END, 'old' || lpad(i::text, 5, '0'), '{}', '1', 1, 'realtime', i, true, now() - interval '100 days'
		FROM generate_series(1, 2500) i`)
	exec(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, deleted, updated_at)
		SELECT 'items', 'young' || i, '{}', '1', 1, 'realtime', i, true, now() - interval '1 day' FROM generate_series(1, 10) i`)
	exec(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, deleted, updated_at)
		SELECT 'items', 'live' || i, '{}', '1', 1, 'realtime', i, false, now() - interval '100 days' FROM generate_series(1, 10) i`)
	// Kept by an unresolved dead letter and by a parked child; a resolved dead letter keeps nothing.
	// An unresolved dead letter of work_orders whose key was never read keeps every
	// tombstone of work_orders (its retry could carry any of their keys).
	exec(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, deleted, updated_at)
		VALUES ('work_orders', 'old-wo', '{}', '1', 1, 'realtime', 1, true, now() - interval '100 days')`)
	exec(`INSERT INTO bridge.failed_records (uid, entity_name, bk_hash, raw_bytes, stage_failed, error_message, resolved_at) VALUES
		(gen_random_uuid(), 'work_orders', NULL, 'x', 'max_deliver', 'gave up', NULL)`)
	exec(`INSERT INTO bridge.failed_records (uid, entity_name, bk_hash, raw_bytes, stage_failed, error_message, resolved_at) VALUES
		(gen_random_uuid(), 'items', 'old00002', 'x', 'write', 'unresolved', NULL),
		(gen_random_uuid(), 'items', 'old00004', 'x', 'write', 'resolved', now())`)
	exec(`INSERT INTO bridge.pending_children (uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key, child_payload, child_raw, child_rowversion, rowversion_ord, source_stream, stream_seq)
		VALUES (gen_random_uuid(), 'sites', 'old00001', 'items', 'p', '{}', '{}', 'x', '1', 1, 'realtime', 1)`)

	cutoff := time.Now().Add(-60 * 24 * time.Hour)
	if n, err := f.st.PruneTombstones(f.ctx, cutoff, true, nil); err != nil || n != 2498 {
		t.Fatalf("dry run: %d %v", n, err)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.synced_records`); got != "2521" {
		t.Fatalf("the dry run removed rows: %s left", got)
	}
	var mu sync.Mutex
	archived := map[string]int{}
	a := archiveFunc{add: func(table string, row []byte) error {
		mu.Lock()
		defer mu.Unlock()
		archived[table+" "+string(row)]++
		return nil
	}}
	var wg sync.WaitGroup
	counts := make([]int64, 2)
	errs := make([]error, 2)
	for i := range counts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts[i], errs[i] = f.st.PruneTombstones(f.ctx, cutoff, false, a)
		}()
	}
	wg.Wait()
	if errors.Join(errs...) != nil || counts[0]+counts[1] != 2498 {
		t.Fatalf("two prunes at once removed %v (want 2498 together): %v", counts, errs)
	}
	if len(archived) != 2498 {
		t.Errorf("archived %d distinct rows, want 2498", len(archived))
	}
	for row, n := range archived {
		if n != 1 || !strings.HasPrefix(row, `synced_records {"entity_name"`) {
			t.Fatalf("archived %d times: %s", n, row)
		}
	}
	want := "items live1..live9 (10)\nitems old00002\nitems young1..young9 (10)\nsites old00001\nwork_orders old-wo" // min..max as text
	got := f.rows(`SELECT entity_name || ' ' || CASE WHEN count(*) = 1 THEN min(bk_hash) ELSE min(bk_hash) || '..' || max(bk_hash) || ' (' || count(*) || ')' END
		FROM bridge.synced_records GROUP BY entity_name, left(bk_hash, 3) ORDER BY 1`)
	if got != want {
		t.Errorf("left in the ledger:\n%s\nwant\n%s", got, want)
	}
}
