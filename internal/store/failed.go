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

// insertFailuresSQL writes dead letters, one unresolved dead letter per message
// (stream, stream_seq): a message that fails again while it has one (redelivered,
// replayed, retried, or given up by JetStream) updates it, and the earlier attempt
// goes into its history.
var insertFailuresSQL = `
INSERT INTO bridge.failed_records AS f
    (uid, batch_uid, entity_name, source_system, source_stream, stream, subject, stream_seq, bk_hash,
     raw_bytes, raw_data, normalized_data, stage_failed, error_message, max_retries, next_retry_at,
     parent_entity, parent_bk_hash, published_at)
SELECT u.uid, $1, u.entity, $2, u.src, u.stream, u.subject, u.seq, u.bk_hash,
       u.raw, u.raw_data::jsonb, u.normalized::jsonb, u.stage, u.err, $3,
       CASE WHEN u.retry THEN now() + $4::interval END, u.parent_entity, u.parent_hash, u.published
FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[],
            $12::bytea[], $13::text[], $14::text[], $15::text[], $16::text[], $17::bool[], $18::text[], $19::text[],
            $20::timestamptz[])
    AS u (uid, entity, src, stream, subject, seq, bk_hash, raw, raw_data, normalized, stage, err, retry,
          parent_entity, parent_hash, published)
` + failureConflictSQL

// failureConflictSQL is the rule for a message that already has an unresolved
// dead letter (the table is aliased f): the dead letter takes the new attempt's
// stage and reason, and keeps the earlier one in its history.
const failureConflictSQL = `
ON CONFLICT (stream, stream_seq) WHERE resolved_at IS NULL DO UPDATE SET
    history = f.history || jsonb_build_object('at', f.updated_at, 'stage', f.stage_failed, 'error', f.error_message),
    batch_uid = coalesce(excluded.batch_uid, f.batch_uid),
    bk_hash = coalesce(excluded.bk_hash, f.bk_hash),
    raw_bytes = CASE WHEN octet_length(excluded.raw_bytes) > 0 THEN excluded.raw_bytes ELSE f.raw_bytes END,
    raw_data = coalesce(excluded.raw_data, f.raw_data),
    normalized_data = coalesce(excluded.normalized_data, f.normalized_data),
    stage_failed = excluded.stage_failed, error_message = excluded.error_message,
    parent_entity = excluded.parent_entity, parent_bk_hash = excluded.parent_bk_hash,
    published_at = coalesce(excluded.published_at, f.published_at),
    next_retry_at = CASE WHEN excluded.next_retry_at IS NOT NULL THEN coalesce(f.next_retry_at, excluded.next_retry_at) END`

// DeadLetter is a failed delivery recorded outside a batch.
type DeadLetter struct {
	Delivery pipeline.Delivery
	Failure  pipeline.Failure
}

// RecordDeadLetters writes dead letters that belong to no batch, such as the
// messages JetStream gave up delivering. A message that already has an unresolved
// dead letter updates it (see insertFailuresSQL).
func (s *Store) RecordDeadLetters(ctx context.Context, cat *catalog.Catalog, items []DeadLetter) error {
	var w *txWork
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		w = s.newWork(tx, uuid.Nil, cat, nil)
		for _, it := range items {
			w.deadLetter(it.Failure, it.Delivery)
		}
		return w.flushDeadLetters(ctx)
	})
	if err == nil {
		w.logDeadLetters()
	}
	return classify(err)
}

// logDeadLetters logs the dead letters of a committed transaction.
func (w *txWork) logDeadLetters() {
	for _, d := range w.dead {
		w.s.deadLog.note(d)
	}
}

// flushDeadLetters writes the transaction's dead letters, raw bytes exactly as
// received, one per message.
func (w *txWork) flushDeadLetters(ctx context.Context) error {
	w.dead = lastPerMessage(w.dead)
	if len(w.dead) == 0 {
		return nil
	}
	n := len(w.dead)
	uids := make([]uuid.UUID, n)
	entities, srcs, streams, subjects := make([]string, n), make([]*string, n), make([]*string, n), make([]string, n)
	hashes, rawData, normalized := make([]*string, n), make([]*string, n), make([]*string, n)
	parents, parentHashes := make([]*string, n), make([]*string, n)
	seqs := make([]*int64, n)
	published := make([]*time.Time, n)
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
		entities[j] = entityLabel(f.Entity)
		if d.Source.Name != "" {
			src := d.Source.Name
			srcs[j] = &src
		}
		if d.Source.Stream != "" && d.StreamSeq > 0 {
			stream, seq := d.Source.Stream, int64(d.StreamSeq)
			streams[j], seqs[j] = &stream, &seq
		}
		subjects[j] = sanitizeText(d.Subject)
		if !d.Published.IsZero() {
			at := d.Published
			published[j] = &at
		}
		if f.BKHash != "" {
			h := f.BKHash
			hashes[j] = &h
		}
		if f.Parent != nil {
			parents[j], parentHashes[j] = &f.Parent.Entity, &f.Parent.BKHash
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
		uids, entities, srcs, streams, subjects, seqs, hashes, raws, rawData, normalized, stages, errs, retry,
		parents, parentHashes, published)
	return err
}

// lastPerMessage keeps, of several failures of one message in one transaction (a
// message delivered twice in one fetch), the last: one statement may not write a
// dead letter twice.
func lastPerMessage(dead []deadLetter) []deadLetter {
	type message struct {
		stream string
		seq    uint64
	}
	last := map[message]int{}
	for i, d := range dead {
		if d.delivery.Source.Stream != "" && d.delivery.StreamSeq > 0 {
			last[message{d.delivery.Source.Stream, d.delivery.StreamSeq}] = i
		}
	}
	if len(last) == len(dead) {
		return dead
	}
	out := dead[:0:0]
	for i, d := range dead {
		if j, ok := last[message{d.delivery.Source.Stream, d.delivery.StreamSeq}]; ok && j != i {
			continue
		}
		out = append(out, d)
	}
	return out
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

// maxEntityLabel bounds the entity name a dead letter is filed under: the name of
// an entity no catalog knows comes from the message, and an indexed column must
// not take whatever length a publisher sends (it would fail every batch that
// holds the message).
const maxEntityLabel = 128

// entityLabel is the entity_name of a dead letter: the entity, cut to
// maxEntityLabel characters, or "unknown".
func entityLabel(entity string) string {
	entity = sanitizeText(entity)
	if entity == "" {
		return UnknownEntity
	}
	if r := []rune(entity); len(r) > maxEntityLabel {
		return string(r[:maxEntityLabel-1]) + "…"
	}
	return entity
}

// sanitizeText makes s storable in a text column: valid UTF-8, no NUL.
func sanitizeText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.ReplaceAll(s, "\x00", `\x00`)
}
