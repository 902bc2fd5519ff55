package mapping

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/syncflow/syncflow/internal/normalize"
)

func ptr(s string) *string { return &s }

func TestTransformations(t *testing.T) {
	tests := []struct {
		chain   string
		in      any
		want    any
		wantErr bool
	}{
		{"none", "x", "x", false},
		{"trim", "  x ", "x", false},
		{"uppercase", "abc", "ABC", false},
		{"lowercase", "ABC", "abc", false},
		{"trim|uppercase", "  ab ", "AB", false},
		{"uppercase", json.Number("5"), json.Number("5"), false},
		{"integer", "42", int64(42), false},
		{"integer", json.Number("42.0"), int64(42), false},
		{"integer", "42.5", nil, true},
		{"integer", "abc", nil, true},
		{"integer", true, nil, true},
		{"integer", "99999999999999999999", nil, true},
		{"decimal", "12.50", json.Number("12.50"), false},
		{"decimal", json.Number("-3e2"), json.Number("-3e2"), false},
		{"decimal", "1/3", nil, true},
		{"integer", json.Number("1e999999"), nil, true},
		{"integer", "1e2", int64(100), false},
		{"decimal", "2.5E-3", json.Number("2.5E-3"), false},
		{"decimal", json.Number("1e999999"), nil, true},
		{"decimal", "1e-101", nil, true},
		{"decimal", json.Number("1e-100"), json.Number("1e-100"), false},
		{"decimal", strings.Repeat("1", 101), nil, true},
		{"decimal", "x", nil, true},
		{"boolean", "Y", true, false},
		{"boolean", "FALSE", false, false},
		{"boolean", json.Number("1"), true, false},
		{"boolean", true, true, false},
		{"boolean", "maybe", nil, true},
		{"date", "2026-11-26T23:30:00+01:00", "2026-11-26", false},
		{"date", "20261126", "2026-11-26", false},
		{"date", "20261126101503", "2026-11-26", false},
		{"date", "26/11/2026", nil, true},
		{"timestamp", "2026-11-26 10:15:03", "2026-11-26T10:15:03Z", false},
		{"timestamp", "2026-11-26T11:15:03+01:00", "2026-11-26T10:15:03Z", false},
		{"timestamp", "20261126101503", "2026-11-26T10:15:03Z", false},
		{"timestamp", "soon", nil, true},
	}
	for _, tt := range tests {
		s, err := Compile([]Rule{{Entity: "e", SourceField: "F", TargetField: "f", Transformation: tt.chain}})
		if err != nil {
			t.Fatal(err)
		}
		row, err := s.Apply(normalize.Record{Entity: "e", Fields: map[string]any{"F": tt.in}}, nil, false)
		if tt.wantErr {
			if err == nil || !errors.Is(err, ErrMapping) {
				t.Errorf("%s(%#v) = %#v, %v; want a mapping error", tt.chain, tt.in, row, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(row["f"], tt.want) {
			t.Errorf("%s(%#v) = %#v, %v; want %#v", tt.chain, tt.in, row["f"], err, tt.want)
		}
	}
}

func TestApply(t *testing.T) {
	rules := []Rule{
		{Entity: "items", SourceField: "part_no", TargetField: "part_no", Transformation: "trim|uppercase", IsRequired: true},
		{Entity: "items", SourceField: "DESCRIPTION", TargetField: "title"},
		{Entity: "items", SourceField: "UNIT_MEAS", TargetField: "unit_meas", DefaultValue: ptr("pcs")},
		{Entity: "items", SourceField: "LEAD_TIME", TargetField: "lead_time_days", Transformation: "integer", DefaultValue: ptr("0")},
		{Entity: "items", SourceField: "WEIGHT", TargetField: "weight", IsRequired: true},
	}
	s, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	rec := normalize.Record{Entity: "items", Fields: map[string]any{
		"PART_NO": "p-1", "DESCRIPTION": "Bolt", "LEAD_TIME": nil, "WEIGHT": json.Number("2"), "COLOR": "red",
	}}
	row, err := s.Apply(rec, []string{"PART_NO"}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"part_no": "P-1", "title": "Bolt", "unit_meas": "pcs", "lead_time_days": int64(0), "weight": json.Number("2"), "color": "red"}
	if !reflect.DeepEqual(row, want) {
		t.Errorf("row = %#v\nwant %#v", row, want)
	}

	// A required field missing is a mapping failure, except for a delete.
	delete(rec.Fields, "WEIGHT")
	if _, err := s.Apply(rec, []string{"PART_NO"}, false); err == nil || !strings.Contains(err.Error(), "required field WEIGHT") {
		t.Errorf("err = %v, want required WEIGHT", err)
	}
	row, err = s.Apply(rec, []string{"PART_NO"}, true)
	if err != nil || !reflect.DeepEqual(row, map[string]any{"part_no": "P-1"}) {
		t.Errorf("delete row = %v, %v; want only the key", row, err)
	}

	// Without rules, fields pass through lower-cased.
	row, err = s.Apply(normalize.Record{Entity: "sites", Fields: map[string]any{"CONTRACT": "S1", "NOTE": nil}}, []string{"CONTRACT"}, false)
	if err != nil || !reflect.DeepEqual(row, map[string]any{"contract": "S1", "note": nil}) {
		t.Errorf("pass-through = %v, %v", row, err)
	}
	var nilSet *Set
	if row, err := nilSet.Apply(normalize.Record{Entity: "x", Fields: map[string]any{"A": 1}}, nil, false); err != nil || row["a"] != 1 {
		t.Errorf("nil set = %v, %v", row, err)
	}
}

func TestCompileRejects(t *testing.T) {
	for _, tt := range []struct {
		rules []Rule
		want  string
	}{
		{[]Rule{{Entity: "e", SourceField: "A", TargetField: "a", Transformation: "titlecase"}}, `unknown transformation "titlecase"`},
		{[]Rule{{Entity: "e", SourceField: "A", TargetField: "a", Transformation: "trim||uppercase"}}, "unknown transformation"},
		{[]Rule{{Entity: "e", SourceField: "A", TargetField: "Bad Name"}}, "lower-case SQL identifier"},
		{[]Rule{{Entity: "e", SourceField: "", TargetField: "a"}}, "required"},
		{[]Rule{{Entity: "e", SourceField: "A", TargetField: "a"}, {Entity: "e", SourceField: "a", TargetField: "a"}}, "duplicate rule"},
		{[]Rule{{Entity: "e", SourceField: "A", TargetField: "x"}, {Entity: "e", SourceField: "B", TargetField: "x"}}, "already written from A"},
	} {
		if _, err := Compile(tt.rules); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Compile(%+v) = %v, want %q", tt.rules, err, tt.want)
		}
	}
	if _, err := Compile([]Rule{{Entity: "e", SourceField: "A", TargetField: "a", Transformation: "trim|lowercase|none"}}); err != nil {
		t.Error(err)
	}
}

// A default must pass its own transformation: it is used for every record that
// lacks the field.
func TestCompileChecksDefaults(t *testing.T) {
	// Text with an "e" is not a number with an exponent: the error says what it is.
	for _, text := range []string{"five", "none"} {
		if _, err := toInteger(text); err == nil || !strings.Contains(err.Error(), "is not an integer") {
			t.Errorf("integer %q: %v, want \"is not an integer\"", text, err)
		}
		if _, err := toDecimal(text); err == nil || !strings.Contains(err.Error(), "is not a decimal number") {
			t.Errorf("decimal %q: %v, want \"is not a decimal number\"", text, err)
		}
	}
	_, err := Compile([]Rule{{Entity: "items", SourceField: "LEAD_TIME", TargetField: "lead_time_days", Transformation: "integer", DefaultValue: ptr("notanint")}})
	if err == nil || !strings.Contains(err.Error(), `default_value "notanint" does not pass integer`) {
		t.Errorf("%v", err)
	}
	for _, r := range []Rule{
		{Entity: "items", SourceField: "A", TargetField: "a", Transformation: "trim|integer", DefaultValue: ptr(" 7 ")},
		{Entity: "items", SourceField: "B", TargetField: "b", Transformation: "boolean", DefaultValue: ptr("N")},
		{Entity: "items", SourceField: "C", TargetField: "c", Transformation: "date", DefaultValue: ptr("20260101")},
		{Entity: "items", SourceField: "D", TargetField: "d", DefaultValue: ptr("anything")},
	} {
		if _, err := Compile([]Rule{r}); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
}

func TestResult(t *testing.T) {
	for chain, want := range map[string]string{"": "", "none": "", "trim|uppercase": "", "integer": "integer", "trim|decimal": "decimal",
		"boolean": "boolean", "date": "date", "timestamp|trim": "timestamp"} {
		if got := Result(chain); got != want {
			t.Errorf("Result(%q) = %q, want %q", chain, got, want)
		}
	}
}

// Excel's "CSV UTF-8" starts with a byte order mark.
func TestReadRulesSkipsTheByteOrderMark(t *testing.T) {
	for _, format := range []string{FormatCSV, FormatJSON} {
		body := "entity_name,source_field,target_field,transformation,default_value,is_required\nitems,UNIT_MEAS,unit_meas,trim,,false\n"
		if format == FormatJSON {
			body = `[{"entity_name":"items","source_field":"UNIT_MEAS","target_field":"unit_meas","transformation":"trim"}]`
		}
		rules, err := ReadRules(strings.NewReader("\uFEFF"+body), format)
		if err != nil || len(rules) != 1 || rules[0].Entity != "items" {
			t.Errorf("%s: %+v %v", format, rules, err)
		}
	}
}

// A broken rule (its column is gone) fails the records that carry its field,
// with the reason, and only those: a record without the field is mapped by the
// other rules, even when the broken rule has a default.
func TestBrokenRules(t *testing.T) {
	def := "each"
	set, err := Compile([]Rule{
		{Entity: "items", SourceField: "UNIT_MEAS", TargetField: "unit", DefaultValue: &def},
		{Entity: "items", SourceField: "DESCRIPTION", TargetField: "description", Transformation: "uppercase"},
	})
	if err != nil {
		t.Fatal(err)
	}
	set = set.WithBroken(map[RuleRef]string{{"items", "UNIT_MEAS", "unit"}: "schedulehub.items has no column unit"})
	rec := func(fields map[string]any) normalize.Record {
		return normalize.Record{Entity: "items", Fields: fields}
	}
	_, err = set.Apply(rec(map[string]any{"PART_NO": "P1", "UNIT_MEAS": "pcs"}), []string{"PART_NO"}, false)
	if !errors.Is(err, ErrMapping) || !strings.Contains(err.Error(), "field UNIT_MEAS -> unit: schedulehub.items has no column unit") {
		t.Errorf("a record with the field: %v", err)
	}
	row, err := set.Apply(rec(map[string]any{"PART_NO": "P2", "DESCRIPTION": "bolt"}), []string{"PART_NO"}, false)
	if err != nil || row["description"] != "BOLT" {
		t.Errorf("a record without the field: %v %v", row, err)
	}
	if _, ok := row["unit"]; ok {
		t.Errorf("the broken rule's default was written: %v", row)
	}
	if row, err := set.Apply(rec(map[string]any{"PART_NO": "P3", "UNIT_MEAS": "pcs"}), []string{"PART_NO"}, true); err != nil || len(row) != 1 {
		t.Errorf("a delete (keys only): %v %v", row, err)
	}
}
