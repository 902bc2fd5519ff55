// Package normalize turns a decoded event into a Record with canonical field names,
// clean values, a parsed rowversion and its business key.
//
// # Rules
//
//   - Field names are matched case-insensitively and upper-cased (IFS spells its
//     columns in upper case); two fields that differ only in case are an error.
//   - Strings are trimmed; an empty string becomes NULL. Nested objects and arrays
//     are kept as sent.
//   - The rowversion is parsed as the catalog says (date or number); see
//     event.ParseRowVersion.
//   - The business key is the catalog's key fields in order, each as its canonical
//     text (event.KeyValue), hashed with event.HashKey. A missing key field is an
//     error. Parent references are hashed the same way from the child's fields; a
//     parent whose fields are all NULL is not referenced.
//
// Every error here is a record failure at stage normalization.
//
// It decides what a valid value is (number caps, rowversion forms, time zones of
// objversions) and imports only catalog and event, never a driver.
package normalize

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
)

// ErrNormalize marks every normalization failure.
var ErrNormalize = errors.New("normalization")

// Record is a normalized event.
type Record struct {
	Entity       string
	Op           event.Op
	SourceSystem string
	RowVersion   event.RowVersion
	// Key holds the canonical business-key values in catalog order.
	Key []string
	// BKHash identifies the row within its entity.
	BKHash string
	// Fields holds the row's fields under upper-case names.
	Fields map[string]any
	// Parents holds a reference for every parent whose key fields are present.
	Parents []ParentRef
	// Repair is the event's repair mark (see event.Event.Repair).
	Repair bool
}

// ParentRef names the parent row a record depends on.
type ParentRef struct {
	Entity string
	BKHash string
	Key    []string
}

// Normalize normalizes ev for entity e. defaultSource fills an empty source_system;
// published, when known, is when a realtime event was stored, which tells the two
// instants of a wall clock repeated by a DST fall-back apart (see
// event.ParseRowVersion).
//
// It takes ev.Data over: when every field name is upper case already (as the
// ERP sends them), the record's fields are ev.Data itself, with the values
// normalized in place, which spares a map per event on the hot path.
func Normalize(ev event.Event, e *catalog.Entity, defaultSource string, published time.Time) (Record, error) {
	fail := func(format string, args ...any) (Record, error) {
		return Record{}, fmt.Errorf("%w: "+format, append([]any{ErrNormalize}, args...)...)
	}
	rec := Record{Entity: e.Name, Op: ev.Op, SourceSystem: ev.SourceSystem, Repair: ev.Repair}
	if rec.SourceSystem == "" {
		rec.SourceSystem = defaultSource
	}
	if len(ev.Data) > 0 && canonicalNames(ev.Data) {
		for name, v := range ev.Data {
			if err := checkNumbers(v); err != nil {
				return fail("field %s: %v", name, err)
			}
			ev.Data[name] = Value(v)
		}
		rec.Fields = ev.Data
	} else {
		rec.Fields = make(map[string]any, len(ev.Data))
		for name, v := range ev.Data {
			up := strings.ToUpper(strings.TrimSpace(name))
			if up == "" {
				return fail("data has a field with an empty name")
			}
			if _, dup := rec.Fields[up]; dup {
				return fail("data has field %q more than once (names are case-insensitive)", up)
			}
			if err := checkNumbers(v); err != nil {
				return fail("field %s: %v", up, err)
			}
			rec.Fields[up] = Value(v)
		}
	}
	rv, err := event.ParseRowVersion(ev.RowVersion, e.RowVersion, e.TimeZone, published)
	if err != nil {
		return fail("%v", err)
	}
	rec.RowVersion = rv
	rec.Key = make([]string, len(e.Key))
	for i, f := range e.Key {
		v, ok := event.KeyValue(rec.Fields[f])
		if !ok {
			return fail("key field %s is missing or empty", f)
		}
		rec.Key[i] = v
	}
	rec.BKHash = event.HashKey(rec.Key)
	for _, p := range e.Parents {
		key := make([]string, 0, len(p.Fields))
		for _, f := range p.Fields {
			if v, ok := event.KeyValue(rec.Fields[f]); ok {
				key = append(key, v)
			}
		}
		switch len(key) {
		case 0:
			// No reference to this parent.
		case len(p.Fields):
			rec.Parents = append(rec.Parents, ParentRef{Entity: p.Entity, BKHash: event.HashKey(key), Key: key})
		default:
			return fail("parent %s: fields %s are only partly present", p.Entity, strings.Join(p.Fields, ", "))
		}
	}
	return rec, nil
}

// canonicalNames tells whether every field name of data is as Normalize
// writes it: not empty, upper case, without surrounding space.
func canonicalNames(data map[string]any) bool {
	for name := range data {
		if name == "" || strings.ToUpper(strings.TrimSpace(name)) != name {
			return false
		}
	}
	return true
}

// checkNumbers applies event.CheckNumber to every number in v, nested ones too:
// a number beyond the caps fails normalization wherever it is, as nothing
// downstream (the target's numeric columns, the dead letters' JSONB) can take it.
func checkNumbers(v any) error {
	switch x := v.(type) {
	case json.Number:
		return event.CheckNumber(string(x))
	case map[string]any:
		for _, e := range x {
			if err := checkNumbers(e); err != nil {
				return err
			}
		}
	case []any:
		for _, e := range x {
			if err := checkNumbers(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// Value normalizes one field value: strings trimmed, empty strings to nil.
func Value(v any) any {
	if s, ok := v.(string); ok {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil
		}
		return s
	}
	return v
}
