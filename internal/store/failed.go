package store

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/catalog"

	"github.com/syncflow/syncflow/internal/pipeline"
)

// RetryPolicy says which dead letters the retry worker re-runs by itself, and when.
//
// Retried automatically: mapping (the rules may be fixed), write (the target may
// accept the row later, e.g. after a constraint or a referenced row changed) and
// max_deliver (the crash loop may have been transient). Not retried automatically:
// decode and normalization (the bytes will not change; fix the catalog or the
// publisher, then `syncflow dlq retry`), and orphan (the sweeper already waited for
// the parent). Any dead letter can be re-run by hand.
//
// The worker retries after FirstRetry (default 1m), doubling up to MaxDelay
// (default 1h), MaxRetries times (default 5).
type RetryPolicy = Backoff

var retryDefaults = Backoff{FirstRetry: time.Minute, MaxDelay: time.Hour, MaxRetries: 5}

// AutoRetried reports whether dead letters of stage are retried by the worker.
func AutoRetried(stage pipeline.Stage) bool {
	switch stage {
	case pipeline.StageMapping, pipeline.StageWrite, pipeline.StageMaxDeliver:
		return true
	}
	return false
}

const insertFailuresSQL = `
INSERT INTO bridge.failed_records
    (uid, batch_uid, entity_name, source_system, source_stream, stream, subject, stream_seq, bk_hash,
     raw_bytes, raw_data, normalized_data, stage_failed, error_message, max_retries, next_retry_at)
SELECT u.uid, $1, u.entity, $2, u.src, u.stream, u.subject, u.seq, u.bk_hash,
       u.raw, u.raw_data::jsonb, u.normalized::jsonb, u.stage, u.err, $3,
       CASE WHEN u.retry THEN now() + $4::interval END
FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[],
            $12::bytea[], $13::text[], $14::text[], $15::text[], $16::text[], $17::bool[])
    AS u (uid, entity, src, stream, subject, seq, bk_hash, raw, raw_data, normalized, stage, err, retry)
ON CONFLICT (stream, stream_seq) WHERE stage_failed = 'max_deliver' AND resolved_at IS NULL DO NOTHING`

// DeadLetter is a failed delivery recorded outside a batch.
type DeadLetter struct {
	Delivery pipeline.Delivery
	Failure  pipeline.Failure
}

// RecordDeadLetters writes dead letters that belong to no batch, such as the
// messages JetStream gave up delivering. A max_deliver dead letter for a message
// already dead-lettered (and not resolved) is not written twice.
func (s *Store) RecordDeadLetters(ctx context.Context, cat *catalog.Catalog, items []DeadLetter) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		w := s.newWork(tx, uuid.Nil, cat, nil)
		for _, it := range items {
			w.deadLetter(it.Failure, it.Delivery)
		}
		return w.flushDeadLetters(ctx)
	})
}

// flushDeadLetters writes the transaction's dead letters, raw bytes exactly as
// received.
func (w *txWork) flushDeadLetters(ctx context.Context) error {
	if len(w.dead) == 0 {
		return nil
	}
	n := len(w.dead)
	uids := make([]uuid.UUID, n)
	entities, srcs, streams, subjects := make([]string, n), make([]*string, n), make([]string, n), make([]string, n)
	hashes, rawData, normalized := make([]*string, n), make([]*string, n), make([]*string, n)
	seqs := make([]int64, n)
	raws := make([][]byte, n)
	stages, errs := make([]string, n), make([]string, n)
	retry := make([]bool, n)
	sourceSystem := "oracle_ifs"
	if w.cat != nil {
		sourceSystem = w.cat.SourceSystem
	}
	for j, f := range w.dead {
		d := f.delivery
		uids[j] = w.s.NewUID()
		entities[j] = sanitizeText(f.Entity)
		if entities[j] == "" {
			entities[j] = UnknownEntity
		}
		if d.Source != "" {
			src := string(d.Source)
			srcs[j] = &src
		}
		streams[j], subjects[j], seqs[j] = d.Stream, sanitizeText(d.Subject), int64(d.StreamSeq)
		if f.BKHash != "" {
			h := f.BKHash
			hashes[j] = &h
		}
		raws[j] = d.Data
		if d.Data == nil {
			raws[j] = []byte{}
		}
		rawData[j] = jsonbText(d.Data)
		if f.Normalized != nil {
			if body, err := json.Marshal(f.Normalized); err == nil {
				normalized[j] = jsonbText(body)
			}
		}
		stages[j], errs[j] = string(f.Stage), sanitizeText(f.Err.Error())
		retry[j] = AutoRetried(f.Stage)
	}
	policy := w.s.cfg.Retry
	var batch *uuid.UUID
	if w.batchUID != uuid.Nil {
		batch = &w.batchUID
	}
	_, err := w.tx.Exec(ctx, insertFailuresSQL, batch, sourceSystem, policy.MaxRetries, policy.FirstRetry,
		uids, entities, srcs, streams, subjects, seqs, hashes, raws, rawData, normalized, stages, errs, retry)
	return err
}

// jsonbText returns body re-encoded as JSON that PostgreSQL's jsonb accepts, or nil
// when body is not JSON. Decoding and re-encoding replaces invalid UTF-8 and lone
// surrogates; a NUL character, which jsonb refuses, makes it nil too (the raw bytes
// are kept regardless).
func jsonbText(body []byte) *string {
	if len(body) == 0 || !json.Valid(body) {
		return nil
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil
	}
	out, err := json.Marshal(v)
	if err != nil || bytes.Contains(out, []byte(`\u0000`)) {
		return nil
	}
	s := string(out)
	return &s
}

// sanitizeText makes s storable in a text column: valid UTF-8, no NUL.
func sanitizeText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.ReplaceAll(s, "\x00", `\x00`)
}
