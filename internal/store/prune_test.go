package store_test

import (
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
	res, err := f.st.Prune(f.ctx, time.Now().Add(-90*24*time.Hour), false, func(table string, row []byte) error {
		archived = append(archived, table+" "+string(row))
		return nil
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
