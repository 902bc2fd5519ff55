package store

// The operator side of bridge.failed_records: dead letters chosen by filter, listed,
// grouped by the fingerprint of their reason, resolved and purged.

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// DeadLetterInfo is one dead letter as operators see it.
type DeadLetterInfo struct {
	UID            uuid.UUID       `json:"uid"`
	Entity         string          `json:"entity_name"`
	Stage          string          `json:"stage_failed"`
	Error          string          `json:"error_message"`
	Stream         string          `json:"stream,omitempty"`
	Subject        string          `json:"subject,omitempty"`
	StreamSeq      int64           `json:"stream_seq,omitempty"`
	BKHash         string          `json:"bk_hash,omitempty"`
	RetryCount     int             `json:"retry_count"`
	MaxRetries     int             `json:"max_retries"`
	NextRetryAt    *time.Time      `json:"next_retry_at"`
	CreatedAt      time.Time       `json:"created_at"`
	ResolvedAt     *time.Time      `json:"resolved_at"`
	ResolutionNote *string         `json:"resolution_note"`
	Fingerprint    string          `json:"fingerprint"`
	Raw            []byte          `json:"-"`
	RawText        string          `json:"raw,omitempty"`
	Normalized     json.RawMessage `json:"normalized_data,omitempty"`
	History        json.RawMessage `json:"history,omitempty"`
}

// DeadLetterFilter chooses dead letters for the operator commands (dlq list,
// groups, retry, resolve, purge). Every field that is set narrows the choice;
// the zero filter chooses every dead letter.
type DeadLetterFilter struct {
	UIDs   []uuid.UUID
	Entity string
	Stage  string
	// Since and Until bound created_at: Since <= created_at < Until.
	Since, Until time.Time
	// Reason is a substring of the error message, matched case-insensitively.
	Reason string
	// Fingerprint chooses one group of `dlq groups`.
	Fingerprint string
	// Match, JSON, chooses the dead letters whose event (raw_data) contains it
	// (@>); the GIN index of `syncflow db gin enable` serves it.
	Match []byte
	// OutsideCatalog, when set, chooses only the dead letters of entities that are
	// not among these names: those of subjects no catalog entity owns.
	OutsideCatalog []string
	// Unresolved and Resolved choose by state; ResolvedBefore (with Resolved)
	// chooses those resolved before it.
	Unresolved, Resolved bool
	ResolvedBefore       time.Time
	// After is a listing's cursor: the rows after this UID in the listing's order.
	After uuid.UUID
	// Limit caps a listing (default 100).
	Limit int
}

// fingerprintSQL is the fingerprint of a dead letter's reason: its entity, its
// stage and its error message with the values stripped (quoted strings, UUIDs,
// hashes, timestamps, numbers), hashed short. Dead letters with one cause share
// it, whatever key or value each one failed on. It is computed in SQL only, so
// that `dlq groups` and every selection by --fingerprint agree.
const fingerprintSQL = `left(md5(entity_name || chr(31) || stage_failed || chr(31) || ` + reasonTemplateSQL + `), 12)`

// reasonTemplateSQL is the error message with its values replaced by ? and its
// numbers by N.
const reasonTemplateSQL = `regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(error_message,
	'"(\\.|[^"\\])*"|''[^'']*''|` + "`[^`]*`" + `', '?', 'g'),
	'[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '?', 'g'),
	'\m[0-9a-fA-F]{16,}\M', '?', 'g'),
	'\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?', '?', 'g'),
	'\m\d+(\.\d+)?\M', 'N', 'g')`

// where returns the filter's conditions (without the cursor and the limit).
func (f DeadLetterFilter) where(a *args) string {
	conds := []string{"true"}
	if len(f.UIDs) > 0 {
		conds = append(conds, "uid = ANY ("+a.add(f.UIDs)+"::uuid[])")
	}
	if f.Entity != "" {
		conds = append(conds, "entity_name = "+a.add(f.Entity))
	}
	if f.Stage != "" {
		conds = append(conds, "stage_failed = "+a.add(f.Stage))
	}
	if !f.Since.IsZero() {
		conds = append(conds, "created_at >= "+a.add(f.Since))
	}
	if !f.Until.IsZero() {
		conds = append(conds, "created_at < "+a.add(f.Until))
	}
	if f.Reason != "" {
		conds = append(conds, "strpos(lower(error_message), lower("+a.add(f.Reason)+")) > 0")
	}
	if f.Fingerprint != "" {
		conds = append(conds, fingerprintSQL+" = "+a.add(strings.ToLower(f.Fingerprint)))
	}
	if f.Match != nil {
		conds = append(conds, "raw_data @> "+a.add(string(f.Match))+"::jsonb")
	}
	if f.OutsideCatalog != nil {
		conds = append(conds, "NOT entity_name = ANY ("+a.add(f.OutsideCatalog)+"::text[])")
	}
	if f.Unresolved {
		conds = append(conds, "resolved_at IS NULL")
	}
	if f.Resolved {
		conds = append(conds, "resolved_at IS NOT NULL")
	}
	if !f.ResolvedBefore.IsZero() {
		conds = append(conds, "resolved_at < "+a.add(f.ResolvedBefore))
	}
	return strings.Join(conds, " AND ")
}

// deadLetterColumns are a dead letter's columns for show; listColumns leave its
// event, normalized data and history out (a page of a list must not read a
// hundred raw events of up to a megabyte each: dlq show has them).
const (
	deadLetterColumns = `uid, entity_name, stage_failed, error_message, coalesce(stream, ''), coalesce(subject, ''),
	coalesce(stream_seq, 0), coalesce(bk_hash, ''), retry_count, max_retries, next_retry_at, created_at, resolved_at,
	resolution_note, ` + fingerprintSQL + `, raw_bytes, normalized_data, history`
	listColumns = `uid, entity_name, stage_failed, error_message, coalesce(stream, ''), coalesce(subject, ''),
	coalesce(stream_seq, 0), coalesce(bk_hash, ''), retry_count, max_retries, next_retry_at, created_at, resolved_at,
	resolution_note, ` + fingerprintSQL + `, ''::bytea, NULL::jsonb, NULL::jsonb`
)

func scanDeadLetter(row pgx.CollectableRow) (DeadLetterInfo, error) {
	var d DeadLetterInfo
	var normalized, history []byte
	err := row.Scan(&d.UID, &d.Entity, &d.Stage, &d.Error, &d.Stream, &d.Subject, &d.StreamSeq, &d.BKHash, &d.RetryCount,
		&d.MaxRetries, &d.NextRetryAt, &d.CreatedAt, &d.ResolvedAt, &d.ResolutionNote, &d.Fingerprint, &d.Raw, &normalized, &history)
	d.RawText = string(d.Raw)
	d.Normalized, d.History = normalized, history
	return d, err
}

// ErrNotFound is returned for a UID that names nothing.
var ErrNotFound = errors.New("not found")

// ListDeadLetters returns the dead letters f chooses, newest first, at most
// f.Limit of them after the cursor f.After, and how many f chooses in all.
func (s *Store) ListDeadLetters(ctx context.Context, f DeadLetterFilter) ([]DeadLetterInfo, int64, error) {
	var a args
	where := f.where(&a)
	var total int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM bridge.failed_records WHERE `+where, a...).Scan(&total); err != nil {
		return nil, 0, err
	}
	if f.After != uuid.Nil {
		where += " AND (created_at, uid) < (SELECT created_at, uid FROM bridge.failed_records WHERE uid = " + a.add(f.After) + ")"
	}
	rows, err := s.pool.Query(ctx, `SELECT `+listColumns+` FROM bridge.failed_records WHERE `+where+`
		ORDER BY created_at DESC, uid DESC LIMIT `+a.add(limitOr(f.Limit, 100)), a...)
	if err != nil {
		return nil, 0, err
	}
	list, err := pgx.CollectRows(rows, scanDeadLetter)
	return list, total, err
}

// DeadLetter returns one dead letter.
func (s *Store) DeadLetter(ctx context.Context, uid uuid.UUID) (DeadLetterInfo, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deadLetterColumns+` FROM bridge.failed_records WHERE uid = $1`, uid)
	if err != nil {
		return DeadLetterInfo{}, err
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDeadLetter)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, ErrNotFound
	}
	return d, err
}

// DeadLetterUIDs returns the UIDs of the dead letters f chooses, oldest first
// (the order a retry takes them in).
func (s *Store) DeadLetterUIDs(ctx context.Context, f DeadLetterFilter) ([]uuid.UUID, error) {
	var a args
	rows, err := s.pool.Query(ctx, `SELECT uid FROM bridge.failed_records WHERE `+f.where(&a)+` ORDER BY created_at, uid`, a...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
}

// DeadLetterCount is the number of dead letters of one entity and stage, and
// when the oldest of them was written.
type DeadLetterCount struct {
	Entity string    `json:"entity_name"`
	Stage  string    `json:"stage_failed"`
	Count  int64     `json:"count"`
	Oldest time.Time `json:"oldest"`
}

// CountDeadLetters counts the dead letters f chooses by entity and stage.
func (s *Store) CountDeadLetters(ctx context.Context, f DeadLetterFilter) ([]DeadLetterCount, error) {
	var a args
	rows, err := s.pool.Query(ctx, `SELECT entity_name, stage_failed, count(*), min(created_at) FROM bridge.failed_records WHERE `+f.where(&a)+`
		GROUP BY 1, 2 ORDER BY 1, 2`, a...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[DeadLetterCount])
}

// DeadLetterGroup is one cause of dead letters: the ones of one entity and stage
// whose reasons differ only in their values.
type DeadLetterGroup struct {
	Fingerprint string    `json:"fingerprint"`
	Entity      string    `json:"entity_name"`
	Stage       string    `json:"stage_failed"`
	Count       int64     `json:"count"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	SampleUID   uuid.UUID `json:"sample_uid"`
	Reason      string    `json:"reason"`
	Sample      string    `json:"sample_error"`
}

// DeadLetterGroups groups the dead letters f chooses by entity, stage and the
// fingerprint of their reason, the largest groups first, at most f.Limit of
// them; it also returns how many groups there are in all.
func (s *Store) DeadLetterGroups(ctx context.Context, f DeadLetterFilter) ([]DeadLetterGroup, int64, error) {
	var a args
	where := f.where(&a)
	rows, err := s.pool.Query(ctx, `WITH chosen AS (
			SELECT uid, entity_name, stage_failed, created_at, error_message, `+reasonTemplateSQL+` AS reason, `+fingerprintSQL+` AS fingerprint
			FROM bridge.failed_records WHERE `+where+`)
		SELECT fingerprint, entity_name, stage_failed, count(*), min(created_at), max(created_at),
		       (array_agg(uid ORDER BY created_at DESC, uid DESC))[1], min(reason),
		       (array_agg(error_message ORDER BY created_at DESC, uid DESC))[1], count(*) OVER ()
		FROM chosen GROUP BY fingerprint, entity_name, stage_failed
		ORDER BY count(*) DESC, max(created_at) DESC, fingerprint LIMIT `+a.add(limitOr(f.Limit, 100)), a...)
	if err != nil {
		return nil, 0, err
	}
	var total int64
	groups, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadLetterGroup, error) {
		var g DeadLetterGroup
		err := r.Scan(&g.Fingerprint, &g.Entity, &g.Stage, &g.Count, &g.FirstSeen, &g.LastSeen, &g.SampleUID, &g.Reason, &g.Sample, &total)
		return g, err
	})
	return groups, total, err
}

// DeadLetterEntities returns the entity names that have dead letters, of the
// given ones (all of them when names is nil).
func (s *Store) DeadLetterEntities(ctx context.Context, names []string) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT entity_name FROM bridge.failed_records
		WHERE $1::text[] IS NULL OR entity_name = ANY ($1) ORDER BY 1`, names)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// ErrAlreadyResolved is returned when a dead letter named by its UID is resolved already.
var ErrAlreadyResolved = errors.New("already resolved")

// ResolveDeadLetters marks the unresolved dead letters f chooses resolved by hand,
// with a note, in chunks of a thousand (short transactions). It returns how many.
func (s *Store) ResolveDeadLetters(ctx context.Context, f DeadLetterFilter, note string) (int64, error) {
	f.Unresolved, f.After, f.Limit = true, uuid.Nil, 0
	var a args
	where := f.where(&a)
	notePos := a.add(sanitizeText(note))
	sql := `UPDATE bridge.failed_records SET resolved_at = now(), resolution_note = ` + notePos + `, next_retry_at = NULL,
		history = history || jsonb_build_object('at', now(), 'resolved_by_hand', ` + notePos + `::text)
		WHERE uid IN (SELECT uid FROM bridge.failed_records WHERE ` + where + ` LIMIT 1000 FOR UPDATE SKIP LOCKED)`
	return s.chunked(ctx, sql, a)
}

// PurgeDeadLetters deletes the resolved dead letters f chooses, in chunks of a
// thousand so that no lock is held for long. It returns how many.
func (s *Store) PurgeDeadLetters(ctx context.Context, f DeadLetterFilter) (int64, error) {
	f.Resolved, f.Unresolved, f.After, f.Limit = true, false, uuid.Nil, 0
	var a args
	sql := `DELETE FROM bridge.failed_records WHERE uid IN (
		SELECT uid FROM bridge.failed_records WHERE ` + f.where(&a) + ` LIMIT 1000 FOR UPDATE SKIP LOCKED)`
	return s.chunked(ctx, sql, a)
}

// RetryDeadLettersOfSubjects makes the unresolved dead letters of these subjects
// that failed as of an unknown entity due for a retry now: the subjects' entity
// was not in the catalog (of this process, or of another that had not read it
// yet) when they failed, and is now. A retry that fails for another reason
// changes the reason, so that such a dead letter is not made due again. It
// returns how many.
func (s *Store) RetryDeadLettersOfSubjects(ctx context.Context, subjects []string) (int64, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE bridge.failed_records SET next_retry_at = now()
		WHERE resolved_at IS NULL AND stage_failed = 'decode' AND next_retry_at IS NULL
		  AND starts_with(error_message, $2) AND subject = ANY ($1::text[])`, subjects, pipeline.UnknownEntityReason)
	return tag.RowsAffected(), classify(err)
}
