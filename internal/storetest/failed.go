package storetest

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// The dead letters (bridge.failed_records): one unresolved per message (stream,
// stream_seq), with the raw bytes as received. NULL columns are nil pointers,
// empty strings, or a zero sequence.

type failedRow struct {
	UID                  uuid.UUID
	Batch                *uuid.UUID
	Entity, SourceSystem string
	Source               string  // source_stream: "" is NULL
	Stream               *string // with Seq (0 is NULL), the message
	Seq                  uint64
	Subject, BKHash      string
	Raw                  []byte
	Normalized           map[string]any
	Stage, Error         string
	Retries, MaxRetries  int
	Next, Resolved       *time.Time
	Note                 string
	History              []History
	Parent               *apply.Key
	Published            time.Time
	Created, Updated     time.Time
}

// History is an earlier attempt of a dead letter, and how it was resolved.
type History struct {
	At                       time.Time
	Stage, Error, Resolution string
}

func (f failedRow) delivery() pipeline.Delivery {
	return pipeline.Delivery{Subject: f.Subject, Source: event.SourceNamed(f.Source), StreamSeq: f.Seq, Data: f.Raw, Published: f.Published}
}

// releasable reports whether f is an unresolved orphan whose parent is applied.
func (f failedRow) releasable(s *state) bool {
	return f.Stage == string(pipeline.StageOrphan) && f.Resolved == nil && f.Parent != nil && s.present(*f.Parent)
}

// message reports whether f and g are dead letters of the same message.
func (f failedRow) message(g failedRow) bool {
	return f.Stream != nil && g.Stream != nil && *f.Stream == *g.Stream && f.Seq != 0 && f.Seq == g.Seq
}

// failedBy returns the dead letters keep says, in uid order.
func (s *state) failedBy(keep func(failedRow) bool) []failedRow {
	var out []failedRow
	for _, f := range s.failed {
		if keep(f) {
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b failedRow) int { return compareUID(a.UID, b.UID) })
	return out
}

// addFailure writes a dead letter; a message that already has an unresolved one
// updates it (the store's failureConflictSQL): the new attempt's stage, reason and
// parent, the earlier attempt into the history, what the new one lacks kept, and
// its next retry kept unless the new attempt is not retried by itself. It returns
// the row as written.
func (s *state) addFailure(f failedRow, now time.Time) failedRow {
	for _, old := range s.failed {
		if old.Resolved != nil || !old.message(f) {
			continue
		}
		u := old
		u.History = append(slices.Clip(old.History), History{At: old.Updated, Stage: old.Stage, Error: old.Error})
		u.Batch = coalesce(f.Batch, old.Batch)
		if f.BKHash != "" {
			u.BKHash = f.BKHash
		}
		if len(f.Raw) > 0 {
			u.Raw = f.Raw
		}
		if f.Normalized != nil {
			u.Normalized = f.Normalized
		}
		u.Stage, u.Error, u.Parent = f.Stage, f.Error, f.Parent
		if !f.Published.IsZero() {
			u.Published = f.Published
		}
		u.Next = nil
		if f.Next != nil {
			u.Next = coalesce(old.Next, f.Next)
		}
		u.Updated = now
		s.failed[u.UID] = u
		return u
	}
	s.failed[f.UID] = f
	return f
}

// coalesce returns the first that is not NULL.
func coalesce[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}

var stages = []string{"decode", "normalization", "mapping", "parent", "orphan", "write", "max_deliver"}

// AddDeadLetters writes dead letters, one unresolved per message (the last of a
// message's failures in dead).
func (t *tx) AddDeadLetters(ctx context.Context, batch *uuid.UUID, sourceSystem string, dead []apply.DeadLetter) error {
	if err := t.stmt(ctx); err != nil {
		return err
	}
	dead = lastPerMessage(dead)
	if len(dead) == 0 {
		return nil
	}
	if batch != nil {
		if err := t.needBatch(*batch, "failed_records"); err != nil {
			return t.fail(err)
		}
	}
	rows := make([]failedRow, len(dead))
	for i, dl := range dead {
		d := dl.Delivery
		f := failedRow{UID: t.m.NewUID(), Batch: batch, Entity: entityLabel(dl.Entity), SourceSystem: sourceSystem,
			Source: d.Source.Name, Subject: text(d.Subject), BKHash: dl.BKHash, Raw: d.Data, Normalized: maps.Clone(dl.Normalized),
			Stage: string(dl.Stage), Error: text(dl.Err.Error()), MaxRetries: dl.MaxRetries, Published: d.Published,
			Created: t.now, Updated: t.now}
		if f.Raw == nil {
			f.Raw = []byte{}
		}
		if d.Source.Stream != "" && d.StreamSeq > 0 {
			stream := d.Source.Stream
			f.Stream, f.Seq = &stream, d.StreamSeq
		}
		if dl.Parent != nil {
			f.Parent = &apply.Key{Entity: dl.Parent.Entity, Hash: dl.Parent.BKHash}
		}
		if dl.RetryAfter != nil {
			next := t.now.Add(*dl.RetryAfter)
			f.Next = &next
		}
		if !slices.Contains(stages, f.Stage) || f.Source != "" && !validSource(f.Source) || f.MaxRetries < 0 {
			return t.fail(rejected("new row for failed_records violates a check constraint (stage %q, source_stream %q, max_retries %d)",
				f.Stage, f.Source, f.MaxRetries))
		}
		rows[i] = f
	}
	for _, f := range rows {
		t.st.addFailure(f, t.now)
	}
	return nil
}

// lastPerMessage keeps, of several failures of one message, the last (the
// store's rule: one statement may not write a dead letter twice).
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
	var out []apply.DeadLetter
	for i, d := range dead {
		if j, ok := last[message{d.Delivery.Source.Stream, d.Delivery.StreamSeq}]; ok && j != i {
			continue
		}
		out = append(out, d)
	}
	return out
}

// entityLabel is the entity a dead letter is filed under (the store's
// entityLabel): the entity, at most 128 characters, or "unknown".
func entityLabel(entity string) string {
	entity = text(entity)
	if entity == "" {
		return apply.UnknownEntity
	}
	if r := []rune(entity); len(r) > 128 {
		return string(r[:127]) + "…"
	}
	return entity
}

// text is s as a text column stores it: valid UTF-8, no NUL.
func text(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", `\x00`)
}

// ResolveDeadLetters marks dead letters resolved, with note.
func (t *tx) ResolveDeadLetters(ctx context.Context, uids []uuid.UUID, note string) error {
	if err := t.stmt(ctx); err != nil {
		return err
	}
	for _, u := range uids {
		f, ok := t.st.failed[u]
		if !ok {
			continue
		}
		now := t.now
		f.Resolved, f.Note, f.Next, f.Updated = &now, note, nil, now
		f.History = append(slices.Clip(f.History), History{At: now, Stage: f.Stage, Error: f.Error, Resolution: note})
		t.st.failed[u] = f
	}
	return nil
}

// FailedAgain records a retry's failure on its dead letter: the earlier attempt
// into its history, one more retry counted, and the next after retryAfter (nil:
// none).
func (t *tx) FailedAgain(ctx context.Context, uid uuid.UUID, fl pipeline.Failure, retryAfter *time.Duration) error {
	if err := t.stmt(ctx); err != nil {
		return err
	}
	f, ok := t.st.failed[uid]
	if !ok {
		return nil
	}
	if !slices.Contains(stages, string(fl.Stage)) {
		return t.fail(rejected("new row for failed_records violates check constraint: stage %q", fl.Stage))
	}
	f.History = append(slices.Clip(f.History), History{At: t.now, Stage: f.Stage, Error: f.Error})
	f.Retries++
	f.Stage, f.Error = string(fl.Stage), text(fl.Err.Error())
	if fl.Normalized != nil {
		f.Normalized = maps.Clone(fl.Normalized)
	}
	if fl.BKHash != "" {
		f.BKHash = fl.BKHash
	}
	f.Next = nil
	if retryAfter != nil {
		next := t.now.Add(*retryAfter)
		f.Next = &next
	}
	f.Updated = t.now
	t.st.failed[uid] = f
	return nil
}

// SelectDeadLetters returns the unresolved dead letters sel chooses, at most limit
// and those of them whose predecessors hold less than maxBytes of events, ordered
// as the store orders them (by next retry or creation, then uid).
func (t *tx) SelectDeadLetters(ctx context.Context, sel deadletter.Selection, limit, maxBytes int) ([]deadletter.Dead, bool, error) {
	if err := t.stmt(ctx); err != nil {
		return nil, false, err
	}
	var rows []failedRow
	var at func(failedRow) time.Time
	if sel.Due {
		rows = t.st.failedBy(func(f failedRow) bool { return f.Resolved == nil && f.Next != nil && !f.Next.After(t.now) })
		at = func(f failedRow) time.Time { return *f.Next }
	} else {
		uids := map[uuid.UUID]bool{}
		for _, u := range sel.UIDs {
			uids[u] = true
		}
		rows = t.st.failedBy(func(f failedRow) bool {
			return f.Resolved == nil && (len(uids) == 0 || uids[f.UID]) && (sel.Entity == "" || f.Entity == sel.Entity) &&
				(sel.Stage == "" || f.Stage == sel.Stage)
		})
		at = func(f failedRow) time.Time { return f.Created }
	}
	slices.SortStableFunc(rows, func(a, b failedRow) int { return at(a).Compare(at(b)) })
	locked := first(rows, limit)
	chosen := withinBytes(locked, maxBytes, func(f failedRow) int { return len(f.Raw) })
	out := make([]deadletter.Dead, len(chosen))
	for i, f := range chosen {
		out[i] = deadletter.Dead{UID: f.UID, Entity: f.Entity, Delivery: f.delivery(), Retries: f.Retries, MaxRetries: f.MaxRetries}
	}
	n := len(locked)
	if len(chosen) == 0 {
		n = 0 // the store counts the rows locked from the rows it returns
	}
	return out, n >= limit || len(out) < n, nil
}
