package store

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// bridge.failed_records: the dead letters, one unresolved per message (stream,
// stream_seq), with the raw bytes exactly as received.

// insertFailuresSQL writes dead letters; a message that already has an unresolved
// one updates it (upsertFailuresSQL; claimMessages runs first).
var insertFailuresSQL, insertNewFailuresSQL = upsertFailuresSQL("", `
SELECT u.uid, $1::uuid AS batch_uid, u.entity AS entity_name, $2::text AS source_system, u.src AS source_stream,
       u.stream, u.subject, u.seq AS stream_seq, u.bk_hash, u.raw AS raw_bytes, u.raw_data::jsonb AS raw_data,
       u.normalized::jsonb AS normalized_data, u.stage AS stage_failed, u.err AS error_message, u.max_retries,
       now() + u.retry_after AS next_retry_at, u.parent_entity, u.parent_hash AS parent_bk_hash, u.published AS published_at
FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[],
            $10::bytea[], $11::text[], $12::text[], $13::text[], $14::text[], $15::int[], $16::interval[],
            $17::text[], $18::text[], $19::timestamptz[])
    AS u (uid, entity, src, stream, subject, seq, bk_hash, raw, raw_data, normalized, stage, err, max_retries,
          retry_after, parent_entity, parent_hash, published)`, 20, `SELECT count(*) FROM ins`)

// failureColumns are the columns a new dead letter is written with, in the order
// of the rows upsertFailuresSQL's source yields.
const failureColumns = `uid, batch_uid, entity_name, source_system, source_stream, stream, subject, stream_seq, bk_hash,
     raw_bytes, raw_data, normalized_data, stage_failed, error_message, max_retries, next_retry_at,
     parent_entity, parent_bk_hash, published_at`

// One message (stream, stream_seq) has at most one unresolved dead letter:
// bridge.failed_record_messages holds, per message that has one, its uid. A
// writer first claims its messages (claimMessagesSQL, a statement of its own),
// then writes (upsertFailuresSQL). A claim that exists names the message's
// unresolved dead letter, which takes the new attempt's stage and reason and
// keeps the earlier ones in its history; a new claim names the dead letter the
// writer inserts. A writer that meets another's claim not yet committed waits
// for it, then updates that dead letter (or, if it was resolved meanwhile,
// inserts a new one): two replicas failing one message leave one dead letter
// with both attempts. The write is a second statement so that it sees the dead
// letter of a claim committed while the first one waited; the claims stay locked
// by this transaction between the two. Claims are taken in message order, so two
// writers cannot deadlock on them. Dead letters without a message identity are
// always inserted.

// claimMessagesSQL claims messages ($1 streams, $2 sequences) for new dead
// letters ($3 uids) and returns each message's claim: the new uid, or the uid of
// the unresolved dead letter it already has.
const claimMessagesSQL = `
INSERT INTO bridge.failed_record_messages AS m (stream, stream_seq, failed_uid)
SELECT x.stream, x.seq, x.uid FROM unnest($1::text[], $2::bigint[], $3::uuid[]) AS x (stream, seq, uid)
WHERE x.stream IS NOT NULL AND x.seq IS NOT NULL
ORDER BY x.stream, x.seq
ON CONFLICT (stream, stream_seq) DO UPDATE SET failed_uid = m.failed_uid
RETURNING m.stream, m.stream_seq, m.failed_uid`

// claims is what claimMessagesSQL returned, as the arrays upsertFailuresSQL
// takes.
type claims struct {
	streams []string
	seqs    []int64
	uids    []uuid.UUID
}

// claimMessages runs claimMessagesSQL.
func (t *tx) claimMessages(ctx context.Context, streams []*string, seqs []*int64, uids []uuid.UUID) (claims, error) {
	var c claims
	rows, err := t.query(ctx, claimMessagesSQL, streams, seqs, uids)
	if err != nil {
		return c, err
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		var q int64
		var u uuid.UUID
		if err := rows.Scan(&s, &q, &u); err != nil {
			return c, err
		}
		c.streams, c.seqs, c.uids = append(c.streams, s), append(c.seqs, q), append(c.uids, u)
	}
	return c, rows.Err()
}

// upsertFailuresSQL writes the dead letters that source (a query yielding
// failureColumns, at most one row per message, which may read the CTEs of
// prefix) describes, given the claims of their messages (three arrays, the
// parameters from claimParam on), and ends with final, which reads the CTEs ins
// (the dead letters inserted) and upd (those updated).
//
// It returns two forms: one that updates the dead letters existing claims name,
// and one for when no claim names an existing dead letter (the usual case),
// which leaves the table's other months alone: an UPDATE whose rows are known
// only when it runs locks every month, and would wait for a prune locking an
// old one.
func upsertFailuresSQL(prefix, source string, claimParam int, final string) (upsert, insertOnly string) {
	if prefix != "" {
		prefix += ",\n"
	}
	p := func(i int) string { return "$" + strconv.Itoa(claimParam+i) }
	head := `
WITH ` + prefix + `n AS (` + source + `),
claim AS (SELECT * FROM unnest(` + p(0) + `::text[], ` + p(1) + `::bigint[], ` + p(2) + `::uuid[]) AS c (stream, stream_seq, failed_uid)),
`
	tail := `ins AS (
    INSERT INTO bridge.failed_records (` + failureColumns + `)
    SELECT ` + failureColumns + ` FROM n
    WHERE n.stream IS NULL OR n.stream_seq IS NULL OR EXISTS (SELECT 1 FROM claim c WHERE c.failed_uid = n.uid)
    RETURNING *)
` + final
	return head + `upd AS (
    UPDATE bridge.failed_records f SET
        history = f.history || jsonb_build_object('at', f.updated_at, 'stage', f.stage_failed, 'error', f.error_message),
        batch_uid = coalesce(n.batch_uid, f.batch_uid),
        bk_hash = coalesce(n.bk_hash, f.bk_hash),
        raw_bytes = CASE WHEN octet_length(n.raw_bytes) > 0 THEN n.raw_bytes ELSE f.raw_bytes END,
        raw_data = coalesce(n.raw_data, f.raw_data),
        normalized_data = coalesce(n.normalized_data, f.normalized_data),
        stage_failed = n.stage_failed, error_message = n.error_message,
        parent_entity = n.parent_entity, parent_bk_hash = n.parent_bk_hash,
        published_at = coalesce(n.published_at, f.published_at),
        next_retry_at = CASE WHEN n.next_retry_at IS NOT NULL THEN coalesce(f.next_retry_at, n.next_retry_at) END
    FROM n JOIN claim c ON c.stream = n.stream AND c.stream_seq = n.stream_seq
    WHERE f.uid = c.failed_uid AND c.failed_uid <> n.uid
    RETURNING f.*),
` + tail,
		head + `upd AS (SELECT * FROM bridge.failed_records WHERE false),
` + tail
}

// updates says whether any claim names a dead letter other than the one
// proposed for its message (uids, in the order of streams and seqs): an
// existing one, which the write must update.
func (c claims) updates(streams []*string, seqs []*int64, uids []uuid.UUID) bool {
	type message struct {
		stream string
		seq    int64
	}
	proposed := make(map[message]uuid.UUID, len(uids))
	for i := range uids {
		if streams[i] != nil && seqs[i] != nil {
			proposed[message{*streams[i], *seqs[i]}] = uids[i]
		}
	}
	for i := range c.uids {
		if proposed[message{c.streams[i], c.seqs[i]}] != c.uids[i] {
			return true
		}
	}
	return false
}

// AddDeadLetters writes dead letters, raw bytes exactly as received, one per
// message.
func (t *tx) AddDeadLetters(ctx context.Context, batch *uuid.UUID, sourceSystem string, dead []apply.DeadLetter) error {
	dead = lastPerMessage(dead)
	n := len(dead)
	uids := make([]uuid.UUID, n)
	entities, srcs, streams, subjects := make([]string, n), make([]*string, n), make([]*string, n), make([]string, n)
	hashes, rawData, normalized := make([]*string, n), make([]*string, n), make([]*string, n)
	parents, parentHashes := make([]*string, n), make([]*string, n)
	seqs := make([]*int64, n)
	maxRetries := make([]int32, n)
	retryAfter := make([]*time.Duration, n)
	published := make([]*time.Time, n)
	raws := make([][]byte, n)
	stages, errs := make([]string, n), make([]string, n)
	for j, f := range dead {
		d := f.Delivery
		uids[j] = t.s.NewUID()
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
		maxRetries[j], retryAfter[j] = int32(f.MaxRetries), f.RetryAfter
	}
	c, err := t.claimMessages(ctx, streams, seqs, uids)
	if err != nil {
		return classify(err)
	}
	sql := insertNewFailuresSQL
	if c.updates(streams, seqs, uids) {
		sql = insertFailuresSQL
	}
	_, err = t.exec(ctx, sql, batch, sourceSystem,
		uids, entities, srcs, streams, subjects, seqs, hashes, raws, rawData, normalized, stages, errs, maxRetries, retryAfter,
		parents, parentHashes, published, c.streams, c.seqs, c.uids)
	return classify(err)
}

// lastPerMessage keeps, of several failures of one message in one transaction (a
// message delivered twice in one fetch), the last: one statement may not write a
// dead letter twice.
func lastPerMessage(dead []apply.DeadLetter) []apply.DeadLetter {
	type message struct {
		stream string
		seq    uint64
	}
	last := map[message]int{}
	for i, d := range dead {
		if d.Delivery.Source.Stream != "" && d.Delivery.StreamSeq > 0 {
			last[message{d.Delivery.Source.Stream, d.Delivery.StreamSeq}] = i
		}
	}
	if len(last) == len(dead) {
		return dead
	}
	out := dead[:0:0]
	for i, d := range dead {
		if j, ok := last[message{d.Delivery.Source.Stream, d.Delivery.StreamSeq}]; ok && j != i {
			continue
		}
		out = append(out, d)
	}
	return out
}

const resolveDeadLettersSQL = `
UPDATE bridge.failed_records SET
    resolved_at = now(), resolution_note = $2, next_retry_at = NULL,
    history = history || jsonb_build_object('at', now(), 'stage', stage_failed, 'error', error_message, 'resolution', $2::text)
WHERE uid = ANY ($1)`

// ResolveDeadLetters marks dead letters resolved, with note.
func (t *tx) ResolveDeadLetters(ctx context.Context, uids []uuid.UUID, note string) error {
	_, err := t.exec(ctx, resolveDeadLettersSQL, uids, note)
	return classify(err)
}

const failedAgainSQL = `
UPDATE bridge.failed_records SET
    history = history || jsonb_build_object('at', now(), 'stage', stage_failed, 'error', error_message),
    retry_count = retry_count + 1, stage_failed = $2, error_message = $3,
    normalized_data = coalesce($4::jsonb, normalized_data), bk_hash = coalesce($5, bk_hash),
    next_retry_at = now() + $6::interval
WHERE uid = $1`

// FailedAgain records a retry's failure on its dead letter.
func (t *tx) FailedAgain(ctx context.Context, uid uuid.UUID, f pipeline.Failure, retryAfter *time.Duration) error {
	var normalized *string
	if f.Normalized != nil {
		if body, err := json.Marshal(f.Normalized); err == nil {
			normalized = jsonbText(body)
		}
	}
	var bk *string
	if f.BKHash != "" {
		bk = &f.BKHash
	}
	_, err := t.exec(ctx, failedAgainSQL, uid, string(f.Stage), sanitizeText(f.Err.Error()), normalized, bk, retryAfter)
	return classify(err)
}

// The dead letters of a retry run: locked (skipping those another run holds), at
// most $1, and of those only as many as fit $2 bytes of raw events (at least
// one), so that a run over large events stays bounded in memory; the last column
// counts the rows locked, to tell whether the bound left some for the next run.
// The partial index ix_failed_records_retry serves the due ones.
const (
	retryColumns = `f.uid, f.entity_name, coalesce(f.source_stream, 'realtime'), coalesce(f.stream, ''), coalesce(f.subject, ''),
       coalesce(f.stream_seq, 0), f.raw_bytes, f.retry_count, f.max_retries, f.published_at, (SELECT count(*) FROM locked)`
	dueDeadLettersSQL = `
WITH locked AS (
    SELECT uid, next_retry_at AS at, octet_length(raw_bytes) AS size
    FROM bridge.failed_records
    WHERE resolved_at IS NULL AND next_retry_at <= now()
    ORDER BY next_retry_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
SELECT ` + retryColumns + `
FROM bridge.failed_records f
JOIN (SELECT uid, at, sum(size) OVER (ORDER BY at, uid) - size AS before FROM locked) c USING (uid)
WHERE c.before < $2
ORDER BY c.at, f.uid`
	chosenDeadLettersSQL = `
WITH locked AS (
    SELECT uid, created_at AS at, octet_length(raw_bytes) AS size
    FROM bridge.failed_records
    WHERE resolved_at IS NULL
      AND (coalesce(cardinality($3::uuid[]), 0) = 0 OR uid = ANY ($3))
      AND ($4 = '' OR entity_name = $4)
      AND ($5 = '' OR stage_failed = $5)
    ORDER BY created_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
SELECT ` + retryColumns + `
FROM bridge.failed_records f
JOIN (SELECT uid, at, sum(size) OVER (ORDER BY at, uid) - size AS before FROM locked) c USING (uid)
WHERE c.before < $2
ORDER BY c.at, f.uid`
)

// SelectDeadLetters locks and returns the unresolved dead letters sel chooses,
// within limit rows and maxBytes of events; more says the bounds left some.
func (t *tx) SelectDeadLetters(ctx context.Context, sel deadletter.Selection, limit, maxBytes int) ([]deadletter.Dead, bool, error) {
	var q pgx.Rows
	var err error
	if sel.Due {
		q, err = t.query(ctx, dueDeadLettersSQL, limit, maxBytes)
	} else {
		q, err = t.query(ctx, chosenDeadLettersSQL, limit, maxBytes, sel.UIDs, sel.Entity, sel.Stage)
	}
	if err != nil {
		return nil, false, classify(err)
	}
	var locked int64
	rows, err := pgx.CollectRows(q, func(r pgx.CollectableRow) (deadletter.Dead, error) {
		var (
			d                 deadletter.Dead
			src, stream, subj string
			seq               int64
			published         *time.Time
		)
		err := r.Scan(&d.UID, &d.Entity, &src, &stream, &subj, &seq, &d.Delivery.Data, &d.Retries, &d.MaxRetries, &published, &locked)
		d.Delivery.Subject, d.Delivery.Source, d.Delivery.StreamSeq = subj, event.SourceNamed(src), uint64(seq)
		if published != nil {
			d.Delivery.Published = *published
		}
		return d, err
	})
	if err != nil {
		return nil, false, classify(err)
	}
	return rows, locked >= int64(limit) || int64(len(rows)) < locked, nil
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
	if err := dec.Decode(&v); err != nil || !numbersFit(v) {
		return nil
	}
	out, err := json.Marshal(v)
	if err != nil || bytes.Contains(out, []byte(`\u0000`)) {
		return nil
	}
	s := string(out)
	return &s
}

// numbersFit reports whether every number in v is within event.CheckNumber's
// caps, which PostgreSQL's numeric (and so jsonb) takes: 1e999999 overflows it,
// and a dead letter whose JSONB cannot be written would fail every batch that
// holds its message.
func numbersFit(v any) bool {
	switch x := v.(type) {
	case json.Number:
		return event.CheckNumber(string(x)) == nil
	case map[string]any:
		for _, e := range x {
			if !numbersFit(e) {
				return false
			}
		}
	case []any:
		for _, e := range x {
			if !numbersFit(e) {
				return false
			}
		}
	}
	return true
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
		return apply.UnknownEntity
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
