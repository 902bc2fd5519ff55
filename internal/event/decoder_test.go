package event

import (
	"bytes"
	stdjson "encoding/json"
	"reflect"
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
		got, err := decodeWire(body)
		ok := err == nil
		if ok != stdOK {
			t.Fatalf("%q: accepted %v (%v), the standard library %v", body, ok, err, stdOK)
		}
		if !ok {
			return
		}
		if string(got.RowVersion) != string(want.RowVersion) {
			t.Fatalf("%q: rowversion %q, the standard library %q", body, got.RowVersion, want.RowVersion)
		}
		got.RowVersion, want.RowVersion = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: decoded %#v, the standard library %#v", body, got, want)
		}
	})
}
