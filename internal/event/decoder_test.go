package event

import (
	"bytes"
	stdjson "encoding/json"
	"reflect"
	"strings"
	"testing"
)

// stdDecode is the wire decoding with the standard library's decoder, the
// reference the decoder in use must agree with: one JSON value, with nothing
// but white space after it.
func stdDecode(body []byte) (wire, bool) {
	var w wire
	dec := stdjson.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&w); err != nil || len(bytes.TrimLeft(body[dec.InputOffset():], " \t\r\n")) > 0 {
		return wire{}, false
	}
	return w, true
}

// The decoder in use accepts exactly the bodies the standard library's accepts,
// and decodes them to the same values: the same field names matched (case
// insensitively, the last of a field twice), the same strings (invalid UTF-8 and
// lone surrogates replaced), the same numbers as text, the same nesting.
func FuzzDecoderAgreesWithTheStandardLibrary(f *testing.F) {
	for _, seed := range []string{
		`{"entity":"sites","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"CONTRACT":"S1","N":1.50,"B":true,"Z":null}}`,
		`{"ENTITY":"sites","Op":"delete","rowversion":42,"data":{"CONTRACT":"S1","N":[1,{"a":null}]},"repair":true}`,
		`{"entity":"a","entity":"b","op":"upsert","rowversion":1,"data":{"K":"x","K":"y"}}`,
		`{"entity":"s","op":"upsert","rowversion":1,"data":{"K":"\xff\u00e9\ud800x"}} `,
		`{"entity":"s","op":"upsert","rowversion":1,"data":{}} {}`, `{"entity":"s","op":"upsert","rowversion":1,"data":{}}]`, `{} }`,
		`{"entity":"s","op":"upsert","rowversion":1,"data":{"K":1e400}}`,
		`{"entity":`, `null`, `{}`, "\x00\xff", `{"data":{"\u0000":"\ud800"}}`, `{"data":[]}`, `{"repair":"yes"}`,
		`{"entity":"s","unknown":{"deep":[1,2,{"x":"y"}]},"op":"upsert","rowversion":{"a":1},"data":{"K":-0.0}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		want, stdOK := stdDecode(body)
		// decodeWire unmarshals the bodies of up to unmarshalAtMost bytes and
		// gives larger ones to decodeStream: both must agree.
		for name, decode := range map[string]func([]byte) (wire, error){"decodeWire": decodeWire, "decodeStream": decodeStream} {
			got, err := decode(body)
			ok := err == nil
			if ok != stdOK {
				t.Fatalf("%s %q: accepted %v (%v), the standard library %v", name, body, ok, err, stdOK)
			}
			if !ok {
				continue
			}
			if string(got.RowVersion) != string(want.RowVersion) {
				t.Fatalf("%s %q: rowversion %q, the standard library %q", name, body, got.RowVersion, want.RowVersion)
			}
			got.RowVersion = nil
			if w := want; !reflect.DeepEqual(got, wire{Entity: w.Entity, Op: w.Op, SourceSystem: w.SourceSystem, Data: w.Data, Repair: w.Repair}) {
				t.Fatalf("%s %q: decoded %#v, the standard library %#v", name, body, got, want)
			}
		}
	})
}

// A body larger than unmarshalAtMost is decoded by the Decoder, with the same
// values and the same refusals as the standard library's.
func TestLargeBodiesDecodeAsSmallOnes(t *testing.T) {
	field := `"` + strings.Repeat("x", unmarshalAtMost) + `"`
	for _, body := range []string{
		`{"entity":"s","op":"upsert","rowversion":1,"data":{"K":` + field + `,"N":1.50}}`,
		`{"entity":"s","op":"upsert","rowversion":1,"data":{"K":` + field + `}} {}`,
		`{"entity":"s","op":"upsert","rowversion":1,"data":{"K":` + field + `}}]`,
		`{"entity":"s","op":"upsert","rowversion":1,"data":[` + field + `]}`,
		`{"entity":"s","op":"upsert","rowversion":1,"data":{"K":` + field,
	} {
		if len(body) <= unmarshalAtMost {
			t.Fatalf("a body of %d bytes is not large", len(body))
		}
		want, stdOK := stdDecode([]byte(body))
		got, err := decodeWire([]byte(body))
		if ok := err == nil; ok != stdOK {
			t.Fatalf("%.80q...: accepted %v (%v), the standard library %v", body, ok, err, stdOK)
		}
		got.RowVersion, want.RowVersion = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%.80q...: decoded differently from the standard library", body)
		}
	}
}
