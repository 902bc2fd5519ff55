package store_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// applyAt applies bodies as the realtime messages at the given stream sequences,
// in one batch.
func (f *fixture) applyAt(entity string, seqs []uint64, bodies ...string) apply.Result {
	f.t.Helper()
	ds := make([]pipeline.Delivery, len(bodies))
	for i, b := range bodies {
		ds[i] = pipeline.Delivery{Subject: "apismith.cdc." + entity, Source: event.Realtime, StreamSeq: seqs[i], Data: []byte(b)}
	}
	e, _ := f.cat.Entity(entity)
	res, err := f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, NewBatch: f.fresh, Source: event.Realtime,
		Replica: "test", Deliveries: ds, Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds)})
	if err != nil {
		f.t.Fatal(err)
	}
	f.fresh = false
	return res
}

// A message that fails again while it has an unresolved dead letter updates it,
// whatever brings it back (a redelivery, a replay, twice in one fetch, JetStream
// giving up on it), and the earlier attempts go into its history; once resolved,
// a new failure is a new dead letter.
func TestOneDeadLetterPerMessage(t *testing.T) {
	f := newFixture(t)
	poison := `{"entity":"sites","op":"upsert","rowversion":"yesterday","data":{"CONTRACT":"S1"}}`
	f.applyAt("sites", []uint64{7}, poison)
	f.applyAt("sites", []uint64{7}, poison)            // redelivered after a crash before the ack
	f.applyAt("sites", []uint64{7, 7}, poison, poison) // twice in one fetch
	err := f.ap.RecordDeadLetters(f.ctx, f.cat, []apply.DeadLetter{{
		Delivery: pipeline.Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: 7},
		Failure:  pipeline.Failure{Stage: pipeline.StageMaxDeliver, Entity: "sites", Err: errString("JetStream gave up")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	got := f.rows(`SELECT stage_failed, jsonb_array_length(history), convert_from(raw_bytes, 'UTF8'), history->0->>'stage' FROM bridge.failed_records`)
	if want := "max_deliver|3|" + poison + "|normalization"; got != want {
		t.Fatalf("dead letters:\n%s\nwant\n%s", got, want)
	}
	if _, err := f.conn.Exec(f.ctx, `UPDATE bridge.failed_records SET resolved_at = now()`); err != nil {
		t.Fatal(err)
	}
	f.applyAt("sites", []uint64{7}, poison) // replayed after it was resolved
	if got := f.rows(`SELECT count(*), count(*) FILTER (WHERE resolved_at IS NULL) FROM bridge.failed_records`); got != "2|1" {
		t.Fatalf("dead letters (all, unresolved): %s", got)
	}
}

// An unknown entity's name comes from the message: a name of any length is filed
// under a bounded label, and does not fail the batch that holds it.
func TestDeadLetterOfAnEntityWithAHugeName(t *testing.T) {
	f := newFixture(t)
	var huge []byte // incompressible, as an index entry must be to overflow
	for sum := sha256.Sum256(nil); len(huge) < 6000; sum = sha256.Sum256(sum[:]) {
		huge = append(huge, hex.EncodeToString(sum[:])...)
	}
	body := `{"entity":"` + string(huge) + `","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"A":1}}`
	ds := []pipeline.Delivery{{Subject: "apismith.cdc." + string(huge), Source: event.Realtime, StreamSeq: 1, Data: []byte(body)}}
	var noEntity *catalog.Entity
	if _, err := f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: noEntity, Catalog: f.cat, BatchUID: f.batch, NewBatch: true, Source: event.Realtime,
		Replica: "test", Deliveries: ds, Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds)}); err != nil {
		t.Fatal(err)
	}
	if got := f.rows(`SELECT stage_failed, char_length(entity_name), octet_length(raw_bytes) FROM bridge.failed_records`); got != "decode|128|"+fmt.Sprint(len(body)) {
		t.Fatalf("dead letter: %s", got)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// A number PostgreSQL's numeric cannot hold, anywhere in an event, fails that
// event alone: its dead letter keeps the raw bytes (the JSONB forms are left
// out), and the rest of the batch commits. Before, the dead letter itself could
// not be written, and the batch was held for ever.
func TestPoisonNumbersAreDeadLettered(t *testing.T) {
	f := newFixture(t)
	bodies := []string{
		siteEvent("upsert", "S1", "2026-01-01T00:00:01Z", "good"),
		`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:01Z","data":{"CONTRACT":"S2","DESCRIPTION":1e999999}}`,
		`{"entity":"sites","op":"bogus","rowversion":"2026-01-01T00:00:01Z","data":{"CONTRACT":"S3","X":[1,{"y":1e999999}]}}`,
		siteEvent("upsert", "S4", "2026-01-01T00:00:01Z", "good too"),
	}
	res := f.apply("sites", nil, bodies...)
	if res.Counts.Inserted != 2 || res.Counts.Failed != 2 {
		t.Fatalf("%+v", res.Counts)
	}
	got := f.rows(`SELECT stage_failed, raw_data IS NULL, octet_length(raw_bytes) > 0 FROM bridge.failed_records ORDER BY stream_seq`)
	if got != "normalization|true|true\ndecode|true|true" {
		t.Fatalf("dead letters:\n%s", got)
	}
	// The max-deliveries path takes such a message too.
	err := f.ap.RecordDeadLetters(f.ctx, f.cat, []apply.DeadLetter{{
		Delivery: pipeline.Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: 999, Data: []byte(bodies[1])},
		Failure:  pipeline.Failure{Stage: pipeline.StageMaxDeliver, Entity: "sites", Err: errString("JetStream gave up")},
	}})
	if err != nil {
		t.Fatal(err)
	}
}
