package store

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/pipeline"
)

const insertFailuresSQL = `
INSERT INTO bridge.failed_records
    (uid, batch_uid, entity_name, source_system, stream, subject, stream_seq, bk_hash,
     raw_bytes, raw_data, normalized_data, stage_failed, error_message)
SELECT u.uid, $1, u.entity, $2, u.stream, u.subject, u.seq, u.bk_hash,
       u.raw, u.raw_data::jsonb, u.normalized::jsonb, u.stage, u.err
FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[],
            $9::bytea[], $10::text[], $11::text[], $12::text[], $13::text[])
    AS u (uid, entity, stream, subject, seq, bk_hash, raw, raw_data, normalized, stage, err)`

// insertFailures writes dead letters with the raw bytes exactly as received.
func (s *Store) insertFailures(ctx context.Context, tx pgx.Tx, b Batch, fs []pipeline.Failure) error {
	if len(fs) == 0 {
		return nil
	}
	n := len(fs)
	uids := make([]uuid.UUID, n)
	entities, streams, subjects, hashes := make([]string, n), make([]string, n), make([]string, n), make([]*string, n)
	seqs := make([]int64, n)
	raws := make([][]byte, n)
	rawData, normalized := make([]*string, n), make([]*string, n)
	stages, errs := make([]string, n), make([]string, n)
	for j, f := range fs {
		d := b.Deliveries[f.Index]
		uids[j] = s.NewUID()
		entities[j] = sanitizeText(f.Entity)
		if entities[j] == "" {
			entities[j] = b.entityName()
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
	}
	_, err := tx.Exec(ctx, insertFailuresSQL, b.BatchUID, sourceSystemOf(b), uids, entities, streams, subjects, seqs, hashes,
		raws, rawData, normalized, stages, errs)
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
