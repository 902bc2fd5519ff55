package pipeline

import (
	"encoding/json"
	"testing"
)

// The fast encoder writes exactly what encoding/json writes: payload hashes
// computed before it existed stay valid.
func TestAppendRowJSONMatchesEncodingJSON(t *testing.T) {
	rows := []map[string]any{
		{},
		{"b": "x", "a": json.Number("12.50"), "c": nil, "d": true, "e": int64(-3), "f": 7, "g": 1.5},
		{"s": "quote \" back \\ tab \t nl \n cr \r ctl \x01 \b \f html <&> utf8 åäö \u2028 \u2029 bad \xff end"},
		{"nested": map[string]any{"z": 1, "a": []any{"x", nil}}},
	}
	for _, row := range rows {
		want, err := json.Marshal(row)
		if err != nil {
			t.Fatal(err)
		}
		got, err := AppendRowJSON(nil, row, nil)
		if err != nil || string(got) != string(want) {
			t.Errorf("AppendRowJSON = %s, %v\nencoding/json  = %s", got, err, want)
		}
	}
	got, _ := AppendRowJSON(nil, map[string]any{"a": 1, "b": 2, "c": 3}, []string{"a", "c"})
	if string(got) != `{"a":1,"c":3}` {
		t.Errorf("columns: %s", got)
	}
}

// SortedRowJSON writes what encoding/json writes whatever the rows before: the
// same keys, others as many, more, fewer, none, and after a row it refused.
func TestSortedRowJSONFollowsItsRows(t *testing.T) {
	var enc SortedRowJSON
	for i, row := range []map[string]any{
		{"B": "x", "A": json.Number("1")},
		{"A": json.Number("2"), "B": "y"},
		{"A": "z", "C": nil},
		{"C": true, "A": "z", "D": int64(4)},
		{"C": true, "A": "z", "D": json.Number("not a number")},
		{"C": false, "A": "w", "D": int64(5)},
		{"C": false},
		{},
		{"A": "<&>"},
	} {
		got, err := enc.Encode(row)
		want, wantErr := json.Marshal(row)
		if wantErr != nil {
			if err == nil {
				t.Errorf("row %d: %s, want an error like %v", i, got, wantErr)
			}
			continue
		}
		if err != nil || string(got) != string(want) {
			t.Errorf("row %d: %s, %v; encoding/json: %s", i, got, err, want)
		}
	}
}

func FuzzAppendRowJSON(f *testing.F) {
	f.Add("k", "v\x00\xff<>&\u2028")
	f.Fuzz(func(t *testing.T, k, v string) {
		var enc SortedRowJSON
		for _, row := range []map[string]any{{k: v, "n": json.Number("1")}, {k + "2": v, "n": json.Number("1")}, {k: v, "n": nil}} {
			want, _ := json.Marshal(row)
			got, err := AppendRowJSON(nil, row, nil)
			if err != nil || string(got) != string(want) {
				t.Fatalf("%q: %s != %s", row, got, want)
			}
			if got, err = enc.Encode(row); err != nil || string(got) != string(want) {
				t.Fatalf("SortedRowJSON %q: %s != %s", row, got, want)
			}
		}
	})
}
