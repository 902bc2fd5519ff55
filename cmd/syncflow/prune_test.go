package main_test

import (
	"strings"
	"testing"
	"time"
)

// prune --tombstones-older-than refuses an age shorter than the streams' max age
// (read from the server) plus the longest backfill cycle, refuses every age when
// a stream keeps events for ever, and otherwise removes the old tombstones only.
func TestPruneTombstonesBound(t *testing.T) {
	w := newWorld(t)
	w.query(`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, deleted, updated_at) VALUES
		('items', 'gone-long-ago', '{}', '1', 1, 'realtime', 1, true, now() - interval '30 days'),
		('items', 'gone-lately', '{}', '1', 1, 'realtime', 2, true, now() - interval '10 days'),
		('items', 'alive', '{}', '1', 1, 'realtime', 3, false, now() - interval '30 days')`)

	// The realtime stream keeps events 14 days.
	out, code := w.cli("prune", "--tombstones-older-than", "13d")
	if code != 2 || !strings.Contains(out, "shorter than 14d, the max age of stream APISMITH_CDC (14d)") {
		t.Errorf("13d against a 14-day stream (%d): %s", code, out)
	}
	// A 7-night backfill of items adds its cycle.
	if out, code := w.cli("schedule", "set", "items", "--days", "7"); code != 0 {
		t.Fatalf("schedule set (%d): %s", code, out)
	}
	out, code = w.cli("prune", "--tombstones-older-than", "20d")
	if code != 2 || !strings.Contains(out, "shorter than 21d, the max age of stream APISMITH_CDC (14d) plus the longest backfill cycle (7d, items)") {
		t.Errorf("20d against 14d + 7d (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.synced_records`); got != "3" {
		t.Fatalf("a refused prune removed rows: %s left", got)
	}
	out, code = w.cli("prune", "--tombstones-older-than", "21d", "--dry-run")
	if code != 0 || !strings.Contains(out, "would remove 1 tombstones older than 21d") {
		t.Errorf("dry run (%d): %s", code, out)
	}
	out, code = w.cli("prune", "--tombstones-older-than", "21d")
	if code != 0 || !strings.Contains(out, "removed 1 tombstones older than 21d") {
		t.Errorf("prune (%d): %s", code, out)
	}
	if got := w.query(`SELECT string_agg(bk_hash, ',' ORDER BY bk_hash) FROM bridge.synced_records`); got != "alive,gone-lately" {
		t.Errorf("left in the ledger: %s", got)
	}

	// A stream with no age limit can replay any old event: no retention is safe.
	s, err := w.js.Stream(w.ctx, "APISMITH_BACKFILL")
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxAge = 0
	if _, err := w.js.UpdateStream(w.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	out, code = w.cli("prune", "--tombstones-older-than", "3650d")
	if code != 2 || !strings.Contains(out, "stream APISMITH_BACKFILL keeps its events with no age limit") {
		t.Errorf("a stream without a max age (%d): %s", code, out)
	}
	cfg.MaxAge = 60 * 24 * time.Hour
	if _, err := w.js.UpdateStream(w.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	out, code = w.cli("prune", "--tombstones-older-than", "21d")
	if code != 2 || !strings.Contains(out, "shorter than 67d, the max age of stream APISMITH_BACKFILL (60d)") {
		t.Errorf("the live max age, not the file's, decides (%d): %s", code, out)
	}

	// No NATS: the bound is unknown, so nothing is pruned; --older-than alone needs no NATS.
	out, code = w.cli("prune", "--tombstones-older-than", "100d", "--nats-url", "nats://127.0.0.1:1")
	if code == 0 || !strings.Contains(out, "pruning tombstones needs the streams' max age from NATS") {
		t.Errorf("without NATS (%d): %s", code, out)
	}
	if out, code := w.cli("prune", "--older-than", "90d", "--nats-url", "nats://127.0.0.1:1"); code != 0 {
		t.Errorf("--older-than without NATS (%d): %s", code, out)
	}
	if out, code := w.cli("prune"); code != 2 || !strings.Contains(out, "--tombstones-older-than 60d") {
		t.Errorf("prune without an age (%d): %s", code, out)
	}
}
