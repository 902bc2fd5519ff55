// Package event is the change event APISmith publishes: its JSON form, its
// rowversion and the business-key hash that identifies the row it describes.
//
// # The event
//
//	{"entity": "sites", "op": "upsert", "source_system": "oracle_ifs",
//	 "rowversion": "2026-11-26T10:15:03Z", "data": {"CONTRACT": "S1", ...}}
//
// op is upsert or delete; a delete needs only the key fields in data. Numbers in
// data are kept exactly as sent (json.Number), never through float64.
//
// "repair": true marks a copy that `syncflow verify --repair` publishes for a
// target row that differs from what the ledger says was written: when the copy
// is the very version the ledger holds (its rowversion and mapped payload), the
// pipeline rewrites the target row. Without it, such a copy is unchanged; a
// copy of another payload at that rowversion is ordered as any other version.
//
// It is the ground floor: it imports nothing of SyncFlow.
package event

import (
	"bytes"
	"errors"
	"fmt"
	json "github.com/goccy/go-json"
	"strings"
)

// MaxSize is the largest event body accepted; it matches the streams' max_msg_size.
const MaxSize = 1 << 20

// Op is what happened to the row.
type Op string

const (
	OpUpsert Op = "upsert"
	OpDelete Op = "delete"
)

// Event is one decoded change event.
type Event struct {
	Entity       string
	Op           Op
	SourceSystem string
	// RowVersion is the rowversion exactly as sent (a JSON string or number); the
	// entity's catalog block decides how it is parsed.
	RowVersion json.RawMessage
	// Data holds the row's fields as sent: string, json.Number, bool, nil, or nested
	// []any / map[string]any.
	Data map[string]any
	// Repair asks for the target row to be rewritten at the ledger's rowversion
	// (see the package doc).
	Repair bool
}

// errTrailing is a body with more after the event's object.
var errTrailing = errors.New("trailing data after the event object")

// decodeWire decodes a body in one pass, data included: events are decoded on
// the hot path (a second pass over a raw "data" cost a third of the CPU). The
// decoder is github.com/goccy/go-json, which accepts and decodes exactly as
// encoding/json does (FuzzDecoderAgreesWithTheStandardLibrary), its Unmarshal
// in a third of the time its Decoder takes (whose reader and buffer cost two
// thirds of the decoding). A body it refuses is decoded again by decodeStream,
// for the error as a Decoder words it, and so is a body larger than
// unmarshalAtMost.
func decodeWire(body []byte) (wire, error) {
	if len(body) > unmarshalAtMost {
		return decodeStream(body)
	}
	var w wire
	uerr := json.UnmarshalWithOption(body, &w, useNumber)
	if uerr == nil {
		return w, nil
	}
	if _, err := decodeStream(body); err != nil {
		return wire{}, err
	}
	// The two agree (FuzzDecoderAgreesWithTheStandardLibrary); should they not,
	// the body is refused with Unmarshal's reason.
	return wire{}, uerr
}

// unmarshalAtMost is the largest body decodeWire unmarshals. Unmarshal copies
// its input into a buffer that its pooled decoding contexts keep for their
// next call, with the capacity of their working lists (up to ten times the
// body for a body of many tiny values), so bodies near MaxSize would leave a
// MiB or more in each: with a backlog of 1 MiB events they raised the peak RSS
// by 12 MiB. A Decoder's buffers are garbage once it returns. Change events
// are a few KiB.
const unmarshalAtMost = 16 << 10

// decodeStream decodes a body with a Decoder: the first value, and an error if
// anything but white space follows.
func decodeStream(body []byte) (wire, error) {
	var w wire
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&w); err != nil {
		return wire{}, err
	}
	if len(bytes.TrimLeft(body[dec.InputOffset():], " \t\r\n")) > 0 {
		return wire{}, errTrailing
	}
	return w, nil
}

// useNumber has Unmarshal decode numbers as json.Number, as a Decoder's
// UseNumber does: the flag UseNumber adds to a Decoder's options, read off
// two Decoders, since Unmarshal has no such option of its own. It is checked
// once, at start: Unmarshal with it must decode 1.50 as the text "1.50".
var useNumber = func() json.DecodeOptionFunc {
	flags := func(useNumber bool) json.DecodeOption {
		dec := json.NewDecoder(strings.NewReader("0"))
		if useNumber {
			dec.UseNumber()
		}
		var set json.DecodeOption
		var v any
		if err := dec.DecodeWithOption(&v, func(o *json.DecodeOption) { set.Flags = o.Flags }); err != nil {
			panic(err)
		}
		return set
	}
	with, without := flags(true), flags(false)
	added := with.Flags &^ without.Flags
	opt := func(o *json.DecodeOption) { o.Flags |= added }
	var v any
	if err := json.UnmarshalWithOption([]byte("1.50"), &v, opt); err != nil || v != json.Number("1.50") {
		panic(fmt.Sprintf("event: numbers do not decode as text: 1.50 is %#v (%v)", v, err))
	}
	return opt
}()

// ErrDecode marks every decoding failure.
var ErrDecode = errors.New("decode")

type wire struct {
	Entity       *string         `json:"entity"`
	Op           *string         `json:"op"`
	SourceSystem *string         `json:"source_system"`
	RowVersion   json.RawMessage `json:"rowversion"`
	Data         map[string]any  `json:"data"`
	Repair       *bool           `json:"repair"`
}

// Decode parses one message body. subjectEntity, when not empty, is the entity named
// by the message's subject; the body must name the same entity.
func Decode(body []byte, subjectEntity string) (Event, error) {
	fail := func(format string, args ...any) (Event, error) {
		return Event{}, fmt.Errorf("%w: "+format, append([]any{ErrDecode}, args...)...)
	}
	if len(body) > MaxSize {
		return fail("body of %d bytes exceeds the %d-byte limit", len(body), MaxSize)
	}
	w, err := decodeWire(body)
	if err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "data" {
			return fail(`"data" must be a JSON object`)
		}
		if errors.As(err, &typeErr) && typeErr.Field == "" {
			return fail("malformed JSON: an event is a JSON object, not %s", typeErr.Value)
		}
		if errors.As(err, &typeErr) {
			return fail("field %q must not be %s", typeErr.Field, typeErr.Value)
		}
		return fail("malformed JSON: %v", err)
	}
	if w.Entity == nil || strings.TrimSpace(*w.Entity) == "" {
		return fail(`missing "entity"`)
	}
	ev := Event{Entity: strings.TrimSpace(*w.Entity)}
	if subjectEntity != "" && ev.Entity != subjectEntity {
		return fail("entity %q in the body does not match the subject's entity %q", ev.Entity, subjectEntity)
	}
	if w.Op == nil {
		return fail(`missing "op" (upsert or delete)`)
	}
	switch op := Op(strings.ToLower(strings.TrimSpace(*w.Op))); op {
	case OpUpsert, OpDelete:
		ev.Op = op
	default:
		return fail("op %q is not upsert or delete", *w.Op)
	}
	if w.SourceSystem != nil {
		ev.SourceSystem = strings.TrimSpace(*w.SourceSystem)
	}
	if len(w.RowVersion) == 0 || string(w.RowVersion) == "null" {
		return fail(`missing "rowversion"`)
	}
	ev.RowVersion = w.RowVersion
	if w.Data == nil {
		return fail(`missing "data"`)
	}
	ev.Data = w.Data
	ev.Repair = w.Repair != nil && *w.Repair
	return ev, nil
}

// Source is one of the two streams SyncFlow reads: every change as it happens
// (realtime), or the nightly backfill's copies of whole rows. Everything that
// differs between them comes from here.
type Source struct {
	// Name is how the bridge tables write the source (source_stream), and how
	// versions of one key tell realtime from backfill (a realtime version wins a
	// rowversion tie).
	Name string
	// Stream is the JetStream stream, and SubjectPrefix its subjects' prefix: an
	// event of entity e is published on SubjectPrefix + e.
	Stream, SubjectPrefix string
	// SyncType is the sync_type of its sync_batches rows.
	SyncType string
	// DurablePrefix begins the names of SyncFlow's durable consumers of the
	// stream: one per entity, named DurablePrefix + entity.
	DurablePrefix string
}

// The two sources.
var (
	Realtime = Source{Name: "realtime", Stream: "APISMITH_CDC", SubjectPrefix: "apismith.cdc.", SyncType: "realtime", DurablePrefix: "syncflow_cdc_"}
	Backfill = Source{Name: "backfill", Stream: "APISMITH_BACKFILL", SubjectPrefix: "apismith.backfill.", SyncType: "background", DurablePrefix: "syncflow_backfill_"}
	Sources  = []Source{Realtime, Backfill}
)

// SourceNamed returns the source of a name (source_stream); an unknown name is
// Realtime, the source of every event before there was a backfill.
func SourceNamed(name string) Source {
	if name == Backfill.Name {
		return Backfill
	}
	return Realtime
}

// SourceOfStream returns the source whose stream is stream.
func SourceOfStream(stream string) (Source, bool) {
	for _, s := range Sources {
		if s.Stream == stream {
			return s, true
		}
	}
	return Source{}, false
}

// Subject returns the subject of entity's events.
func (s Source) Subject(entity string) string { return s.SubjectPrefix + entity }

// Durable returns the name of SyncFlow's durable consumer of entity's events.
func (s Source) Durable(entity string) string { return s.DurablePrefix + entity }

// SubjectEntity returns the entity token of a SyncFlow subject, or "" when the
// subject is not one.
func SubjectEntity(subject string) string {
	for _, src := range Sources {
		if rest, ok := strings.CutPrefix(subject, src.SubjectPrefix); ok && rest != "" && !strings.Contains(rest, ".") {
			return rest
		}
	}
	return ""
}
