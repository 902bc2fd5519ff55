package storetest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/normalize"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Backend is a store under test: the interfaces the core uses, a view of its
// tables in the terms the contract compares, and the means to arrange a case.
// Memory is one; the store's tests make the PostgreSQL store one.
type Backend interface {
	ApplyStore() apply.Store
	DeadLetterStore() deadletter.Store

	// The tables, each in a stable order.
	LedgerRows(t testing.TB) []LedgerEntry
	ParkedRows(t testing.TB) []ParkedEntry
	DeadLetterRows(t testing.TB) []DeadLetterEntry
	BatchRows(t testing.TB) []BatchEntry
	// TargetRows returns the rows of entity's target table, each its columns'
	// values joined by "|" (NULL for none), sorted; a column named "c?" is "true"
	// when c is set, else "false". Compare text and integer columns: PostgreSQL
	// writes a numeric in its column's scale, a timestamp in its own format.
	TargetRows(t testing.TB, entity string, columns ...string) []string

	// MakeParkedDue makes every parked child due for the sweeper: its next
	// re-check a second ago.
	MakeParkedDue(t testing.TB)
	// SetParkedRetries sets the re-checks every parked child has had.
	SetParkedRetries(t testing.TB, n int)
	// MakeDeadLettersDue makes every unresolved dead letter that has a next retry
	// due: its next retry a second ago.
	MakeDeadLettersDue(t testing.TB)
	// RejectTargetRow makes the target of entity refuse every row upserted whose
	// column holds value (as text), as a constraint or trigger of the target does
	// (apply.ErrRowRejected).
	RejectTargetRow(t testing.TB, entity, column, value string)
	// BreakParking makes parking the child whose key hash is childHash fail: with
	// apply.ErrRowRejected when rejected, else with an error of no known kind.
	BreakParking(t testing.TB, childHash string, rejected bool)
}

// LedgerEntry is a ledger row.
type LedgerEntry struct {
	Entity, Hash string
	Key          []string
	RowVersion   string
	Version      pipeline.Version
	Deleted      bool
}

func (e LedgerEntry) String() string {
	s := fmt.Sprintf("%s %q %s %s#%d", e.Entity, e.Key, e.RowVersion, e.Version.Source.Name, e.Version.Seq)
	if e.Deleted {
		s += " deleted"
	}
	return s
}

// ParkedEntry is a parked child.
type ParkedEntry struct {
	UID           uuid.UUID
	Child, Parent apply.Key
	// ChildKey is the child's key, read from its event.
	ChildKey []string
	// ParentKey is the parent's key as psql shows it.
	ParentKey           string
	RowVersion          string
	Source              string
	Seq                 uint64
	Retries, MaxRetries int
	NextAt, UpdatedAt   time.Time
	Due                 bool
	Raw                 []byte
}

// Wait is how long after its last change the child is re-checked.
func (e ParkedEntry) Wait() time.Duration { return e.NextAt.Sub(e.UpdatedAt) }

func (e ParkedEntry) String() string {
	return fmt.Sprintf("%s %q waits for %s %s (%s, re-checked %d of %d)", e.Child.Entity, e.ChildKey, e.Parent.Entity, e.ParentKey,
		e.RowVersion, e.Retries, e.MaxRetries)
}

// DeadLetterEntry is a dead letter.
type DeadLetterEntry struct {
	UID                  uuid.UUID
	Entity, Stage, Error string
	// Stream and Seq identify the message ("" and 0 when it has no identity).
	Stream              string
	Seq                 uint64
	BKHash              string
	Parent              apply.Key // zero when none
	Raw                 []byte
	Retries, MaxRetries int
	NextAt              *time.Time
	UpdatedAt           time.Time
	Due                 bool
	Resolved            bool
	Note                string
	// History holds the earlier attempts, "stage: error", with " => resolution"
	// when one resolved it.
	History []string
}

// Retry is how long after its last change the dead letter is retried, and
// whether it is.
func (e DeadLetterEntry) Retry() (time.Duration, bool) {
	if e.NextAt == nil {
		return 0, false
	}
	return e.NextAt.Sub(e.UpdatedAt), true
}

func (e DeadLetterEntry) String() string {
	s := fmt.Sprintf("%s #%d %s: %s (retried %d of %d)", e.Entity, e.Seq, e.Stage, e.Error, e.Retries, e.MaxRetries)
	if e.Resolved {
		s += " resolved: " + e.Note
	}
	return s
}

// BatchEntry is a batch row.
type BatchEntry struct {
	UID                                     uuid.UUID
	Entity, SourceSystem, SyncType, Replica string
	Status                                  string
	Counts                                  pipeline.Counts
}

// KeyOf returns the key of the event raw of entity, as the pipeline reads it (nil
// when it does not normalize).
func KeyOf(cat *catalog.Catalog, entity string, raw []byte) []string {
	e, ok := cat.Entity(entity)
	if !ok {
		return nil
	}
	ev, err := event.Decode(raw, entity)
	if err != nil {
		return nil
	}
	rec, err := normalize.Normalize(ev, e, cat.SourceSystem, time.Time{})
	if err != nil {
		return nil
	}
	return rec.Key
}

// HistoryLine writes an earlier attempt as DeadLetterEntry.History holds it.
func HistoryLine(stage, err, resolution string) string {
	s := stage + ": " + err
	if resolution != "" {
		s += " => " + resolution
	}
	return s
}

// Memory as a Backend.

// ApplyStore returns m.
func (m *Memory) ApplyStore() apply.Store { return m }

// DeadLetterStore returns m as a deadletter.Store.
func (m *Memory) DeadLetterStore() deadletter.Store { return m.DeadLetters() }

// LedgerRows returns the ledger by entity and hash.
func (m *Memory) LedgerRows(testing.TB) []LedgerEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []LedgerEntry
	for k, r := range m.st.ledger {
		out = append(out, LedgerEntry{Entity: k.Entity, Hash: k.Hash, Key: r.Key, RowVersion: r.RowVersion, Version: r.Version, Deleted: r.Deleted})
	}
	slices.SortFunc(out, func(a, b LedgerEntry) int {
		return strings.Compare(a.Entity+"\x00"+a.Hash, b.Entity+"\x00"+b.Hash)
	})
	return out
}

// ParkedRows returns the parked children by child entity and key.
func (m *Memory) ParkedRows(testing.TB) []ParkedEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.Now()
	var out []ParkedEntry
	for _, p := range m.st.parked {
		out = append(out, ParkedEntry{UID: p.UID, Child: p.Child, Parent: p.Parent, ChildKey: KeyOf(m.cat, p.Child.Entity, p.Raw),
			ParentKey: jsonbArray(p.ParentKey), RowVersion: p.RowVersion, Source: p.Version.Source.Name, Seq: p.Version.Seq,
			Retries: p.Retries, MaxRetries: p.MaxRetries, NextAt: p.Next, UpdatedAt: p.Updated, Due: !p.Next.After(now), Raw: p.Raw})
	}
	SortParked(out)
	return out
}

// SortParked sorts parked entries by child entity and key.
func SortParked(rows []ParkedEntry) {
	slices.SortFunc(rows, func(a, b ParkedEntry) int {
		return strings.Compare(a.Child.Entity+"\x00"+strings.Join(a.ChildKey, "\x00"), b.Child.Entity+"\x00"+strings.Join(b.ChildKey, "\x00"))
	})
}

// DeadLetterRows returns the dead letters by message sequence (none last), then
// uid.
func (m *Memory) DeadLetterRows(testing.TB) []DeadLetterEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.Now()
	var out []DeadLetterEntry
	for _, f := range m.st.failedBy(func(failedRow) bool { return true }) {
		e := DeadLetterEntry{UID: f.UID, Entity: f.Entity, Stage: f.Stage, Error: f.Error, Seq: f.Seq, BKHash: f.BKHash, Raw: f.Raw,
			Retries: f.Retries, MaxRetries: f.MaxRetries, NextAt: f.Next, UpdatedAt: f.Updated, Due: f.Next != nil && !f.Next.After(now),
			Resolved: f.Resolved != nil, Note: f.Note}
		if f.Stream != nil {
			e.Stream = *f.Stream
		}
		if f.Parent != nil {
			e.Parent = *f.Parent
		}
		for _, h := range f.History {
			e.History = append(e.History, HistoryLine(h.Stage, h.Error, h.Resolution))
		}
		out = append(out, e)
	}
	SortDeadLetters(out)
	return out
}

// SortDeadLetters sorts dead letters by message sequence (none last), then uid.
func SortDeadLetters(rows []DeadLetterEntry) {
	slices.SortStableFunc(rows, func(a, b DeadLetterEntry) int {
		switch {
		case a.Seq == b.Seq:
			return compareUID(a.UID, b.UID)
		case a.Seq == 0:
			return 1
		case b.Seq == 0:
			return -1
		case a.Seq < b.Seq:
			return -1
		}
		return 1
	})
}

// BatchRows returns the batch rows by uid.
func (m *Memory) BatchRows(testing.TB) []BatchEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []BatchEntry
	for uid, b := range m.st.batches {
		out = append(out, BatchEntry{UID: uid, Entity: b.Row.Entity, SourceSystem: b.Row.SourceSystem, SyncType: b.Row.SyncType,
			Replica: b.Row.Replica, Status: b.Status, Counts: b.Counts})
	}
	slices.SortFunc(out, func(a, b BatchEntry) int { return compareUID(a.UID, b.UID) })
	return out
}

// TargetRows returns the rows of entity's target.
func (m *Memory) TargetRows(_ testing.TB, entity string, columns ...string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, row := range m.st.targets[entity] {
		cells := make([]string, len(columns))
		for i, c := range columns {
			if name, isSet := strings.CutSuffix(c, "?"); isSet {
				cells[i] = fmt.Sprint(row[name] != nil)
				continue
			}
			cells[i] = "NULL"
			if v := row[c]; v != nil {
				cells[i] = fmt.Sprint(v)
			}
		}
		out = append(out, strings.Join(cells, "|"))
	}
	slices.Sort(out)
	return out
}

// MakeParkedDue makes every parked child due.
func (m *Memory) MakeParkedDue(testing.TB) {
	m.update(func(s *state, now time.Time) {
		for k, p := range s.parked {
			p.Next, p.Updated = now.Add(-time.Second), now
			s.parked[k] = p
		}
	})
}

// SetParkedRetries sets the re-checks every parked child has had.
func (m *Memory) SetParkedRetries(_ testing.TB, n int) {
	m.update(func(s *state, now time.Time) {
		for k, p := range s.parked {
			p.Retries, p.Updated = n, now
			s.parked[k] = p
		}
	})
}

// MakeDeadLettersDue makes every unresolved dead letter with a next retry due.
func (m *Memory) MakeDeadLettersDue(testing.TB) {
	m.update(func(s *state, now time.Time) {
		for uid, f := range s.failed {
			if f.Resolved == nil && f.Next != nil {
				due := now.Add(-time.Second)
				f.Next, f.Updated = &due, now
				s.failed[uid] = f
			}
		}
	})
}

func (m *Memory) update(fn func(*state, time.Time)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.st.clone()
	fn(st, m.Now())
	m.st = st
}

// RejectTargetRow makes the target of entity refuse every row upserted whose
// column holds value.
func (m *Memory) RejectTargetRow(_ testing.TB, entity, column, value string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rejects = append(m.rejects, reject{entity, column, value})
}

// BreakParking makes parking the child whose key hash is childHash fail.
func (m *Memory) BreakParking(_ testing.TB, childHash string, isRejected bool) {
	err := errors.New("injected failure")
	if isRejected {
		err = rejected("injected failure")
	}
	m.FailParking(childHash, err)
}

// FailParking makes parking the child whose key hash is childHash fail with err.
func (m *Memory) FailParking(childHash string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.breakParked[childHash] = err
}

// Outrun makes the next ledger write of the key whose hash is keyHash lose, as
// when another transaction committed a newer version of it between the lock and
// the write; the write after that is as usual.
func (m *Memory) Outrun(keyHash string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.outrun[keyHash] = true
}

var _ Backend = (*Memory)(nil)
