package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/syncflow/syncflow/internal/apply"
)

// bridge.unmapped_fields: event fields no rule maps and no target column takes.

// MaxUnmappedFields bounds the fields counted per entity; the fields after them
// are counted together under OtherField.
const (
	MaxUnmappedFields = 50
	OtherField        = "(other)"
)

// drift counts, between flushes, the fields a target could not take.
type drift struct {
	mu     sync.Mutex
	fields map[string]map[string]*seen // entity -> field, since the last flush
	known  map[string]map[string]bool  // entity -> the fields counted since start, at most MaxUnmappedFields
	total  map[[2]string]int64         // since start, for the metrics
}

type seen struct {
	first, last time.Time
	count       int64
	sample      string
}

func newDrift() *drift {
	return &drift{fields: map[string]map[string]*seen{}, known: map[string]map[string]bool{}, total: map[[2]string]int64{}}
}

// unmappedNotes are the unmapped fields of one transaction: one count per
// record, however often a record is written again (bisection, savepoints).
type unmappedNotes struct {
	seen  map[[3]string]bool // entity, field, record key
	notes []unmappedNote
}

type unmappedNote struct {
	entity, field string
	value         any
	at            time.Time
	seen          [3]string
}

func newUnmappedNotes() *unmappedNotes { return &unmappedNotes{seen: map[[3]string]bool{}} }

func (u *unmappedNotes) note(entity, field, key string, value any, at time.Time) {
	k := [3]string{entity, field, key}
	if u.seen[k] {
		return
	}
	u.seen[k] = true
	u.notes = append(u.notes, unmappedNote{entity, field, value, at, k})
}

// len is how many notes there are (none without notes).
func (u *unmappedNotes) len() int {
	if u == nil {
		return 0
	}
	return len(u.notes)
}

// truncate forgets the notes after the first n: those of rows a rolled-back
// savepoint undid.
func (u *unmappedNotes) truncate(n int) {
	if u == nil {
		return
	}
	for _, x := range u.notes[n:] {
		delete(u.seen, x.seen)
	}
	u.notes = u.notes[:n]
}

// merge counts a committed transaction's unmapped fields.
func (d *drift) merge(u *unmappedNotes) {
	for _, n := range u.notes {
		d.note(n.entity, n.field, n.value, n.at)
	}
}

// maxFieldName bounds a field name as counted: a longer one is cut (and is
// told apart from the others by what is left).
const maxFieldName = 120

// note counts field of entity as seen, with one of its values.
func (d *drift) note(entity, field string, value any, at time.Time) {
	field = cut(field, maxFieldName)
	d.mu.Lock()
	defer d.mu.Unlock()
	known := d.known[entity]
	if known == nil {
		known = map[string]bool{}
		d.known[entity] = known
	}
	if !known[field] {
		if len(known) >= MaxUnmappedFields {
			field = OtherField
		} else {
			known[field] = true
		}
	}
	byField := d.fields[entity]
	if byField == nil {
		byField = map[string]*seen{}
		d.fields[entity] = byField
	}
	s := byField[field]
	if s == nil {
		s = &seen{first: at, last: at, sample: sample(value)}
		byField[field] = s
	}
	// Transactions commit, and are merged, in another order than they saw
	// their events: the first and last seen are the least and the greatest.
	s.widen(at, at)
	s.count++
	d.total[[2]string{entity, field}]++
}

// cut cuts s to at most n bytes, on a rune boundary, marking the cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func sample(v any) string {
	return strings.ToValidUTF8(strings.ReplaceAll(cut(fmt.Sprint(v), 200), "\x00", ""), "?")
}

// take returns what was counted since the last take.
func (d *drift) take() map[string]map[string]*seen {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.fields
	d.fields = map[string]map[string]*seen{}
	return out
}

// putBack returns what a failed flush took, to be written with the next one.
func (d *drift) putBack(taken map[string]map[string]*seen) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for entity, byField := range taken {
		if d.fields[entity] == nil {
			d.fields[entity] = map[string]*seen{}
		}
		for field, s := range byField {
			if cur := d.fields[entity][field]; cur != nil {
				cur.widen(s.first, s.last)
				cur.count += s.count
				continue
			}
			d.fields[entity][field] = s
		}
	}
}

// widen makes s cover [first, last].
func (s *seen) widen(first, last time.Time) {
	if first.Before(s.first) {
		s.first = first
	}
	if last.After(s.last) {
		s.last = last
	}
}

// UnmappedTotals returns, per entity and field, how many values this process
// could not write since it started (for the metrics).
func (s *Store) UnmappedTotals() map[[2]string]int64 {
	s.drift.mu.Lock()
	defer s.drift.mu.Unlock()
	return maps.Clone(s.drift.total)
}

const flushDriftSQL = `
INSERT INTO bridge.unmapped_fields AS u (entity_name, field_name, first_seen_at, last_seen_at, seen_count, sample_value)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::bigint[], $6::text[])
ON CONFLICT (entity_name, field_name) DO UPDATE SET
    first_seen_at = least(u.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(u.last_seen_at, excluded.last_seen_at),
    seen_count = u.seen_count + excluded.seen_count,
    sample_value = coalesce(u.sample_value, excluded.sample_value)`

// FlushDrift writes the fields counted since the last flush. The table holds at
// most MaxUnmappedFields fields per entity, whatever the processes that wrote
// it: a field it does not have is counted under OtherField once the entity has
// that many. What the table refuses (a value it cannot take) is dropped, so that
// one bad entry does not stop every flush after it.
func (s *Store) FlushDrift(ctx context.Context) error {
	taken := s.drift.take()
	if len(taken) == 0 {
		return nil
	}
	if err := s.boundByTable(ctx, taken); err != nil {
		s.drift.putBack(taken)
		return classify(err)
	}
	var entities, fields, samples []string
	var firsts, lasts []time.Time
	var counts []int64
	for _, entity := range slices.Sorted(maps.Keys(taken)) {
		for _, field := range slices.Sorted(maps.Keys(taken[entity])) {
			sn := taken[entity][field]
			entities, fields, samples = append(entities, entity), append(fields, field), append(samples, sn.sample)
			firsts, lasts, counts = append(firsts, sn.first), append(lasts, sn.last), append(counts, sn.count)
		}
	}
	if _, err := s.pool.Exec(ctx, flushDriftSQL, entities, fields, firsts, lasts, counts, samples); err != nil {
		err = classify(err)
		if errors.Is(err, apply.ErrRowRejected) {
			return fmt.Errorf("the unmapped fields counted since the last flush were dropped: %w", err)
		}
		s.drift.putBack(taken)
		return err
	}
	return nil
}

// boundByTable folds into OtherField the fields the table does not have yet
// of an entity that has MaxUnmappedFields fields there already.
func (s *Store) boundByTable(ctx context.Context, taken map[string]map[string]*seen) error {
	rows, err := s.pool.Query(ctx, `SELECT entity_name, field_name FROM bridge.unmapped_fields WHERE entity_name = ANY ($1::text[])`,
		slices.Collect(maps.Keys(taken)))
	if err != nil {
		return err
	}
	stored := map[string]map[string]bool{}
	var entity, field string
	_, err = pgx.ForEachRow(rows, []any{&entity, &field}, func() error {
		if stored[entity] == nil {
			stored[entity] = map[string]bool{}
		}
		stored[entity][field] = true
		return nil
	})
	if err != nil {
		return err
	}
	for entity, byField := range taken {
		n := len(stored[entity])
		if stored[entity][OtherField] {
			n--
		}
		for _, field := range slices.Sorted(maps.Keys(byField)) {
			if field == OtherField || stored[entity][field] {
				continue
			}
			if n < MaxUnmappedFields {
				n++
				continue
			}
			sn := byField[field]
			delete(byField, field)
			if other := byField[OtherField]; other != nil {
				other.count += sn.count
				if sn.first.Before(other.first) {
					other.first = sn.first
				}
				if sn.last.After(other.last) {
					other.last = sn.last
				}
			} else {
				byField[OtherField] = sn
			}
		}
	}
	return nil
}

// UnmappedField is a row of bridge.unmapped_fields.
type UnmappedField struct {
	Entity    string    `json:"entity_name"`
	Field     string    `json:"field_name"`
	FirstSeen time.Time `json:"first_seen_at"`
	LastSeen  time.Time `json:"last_seen_at"`
	Count     int64     `json:"seen_count"`
	Sample    *string   `json:"sample_value"`
}

// UnmappedFields lists the fields no rule mapped and no column took, of entity
// (all when empty), most recently seen first.
func (s *Store) UnmappedFields(ctx context.Context, entity string) ([]UnmappedField, error) {
	rows, err := s.pool.Query(ctx, `SELECT entity_name, field_name, first_seen_at, last_seen_at, seen_count, sample_value
		FROM bridge.unmapped_fields WHERE $1 = '' OR entity_name = $1 ORDER BY last_seen_at DESC, entity_name, field_name`, entity)
	if err != nil {
		return nil, notMigrated(err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[UnmappedField])
}

// observedFields returns, per entity, the event fields seen that nothing took.
func (s *Store) observedFields(ctx context.Context) (map[string][]string, error) {
	fields, err := s.UnmappedFields(ctx, "")
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, f := range fields {
		out[f.Entity] = append(out[f.Entity], f.Field)
	}
	for e := range out {
		slices.Sort(out[e])
	}
	return out, nil
}
