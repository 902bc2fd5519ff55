package store_test

import (
	"errors"
	"strings"
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
