package event

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name, body, subject string
		wantErr             string // substring; empty for success
		check               func(t *testing.T, ev Event)
	}{
		{name: "upsert", subject: "sites",
			body: `{"entity":"sites","op":"upsert","source_system":"oracle_ifs","rowversion":"2026-11-26T10:15:03Z","data":{"CONTRACT":"S1","QTY":12.50}}`,
			check: func(t *testing.T, ev Event) {
				if ev.Entity != "sites" || ev.Op != OpUpsert || ev.SourceSystem != "oracle_ifs" {
					t.Errorf("got %+v", ev)
				}
				if n, ok := ev.Data["QTY"].(json.Number); !ok || n.String() != "12.50" {
					t.Errorf("QTY = %#v, want json.Number 12.50 kept exactly", ev.Data["QTY"])
				}
				if string(ev.RowVersion) != `"2026-11-26T10:15:03Z"` {
					t.Errorf("rowversion = %s", ev.RowVersion)
				}
			}},
		{name: "delete op is case-insensitive", body: `{"entity":"sites","op":" DELETE ","rowversion":1,"data":{"CONTRACT":"S1"}}`,
			check: func(t *testing.T, ev Event) {
				if ev.Op != OpDelete {
					t.Errorf("op = %q", ev.Op)
				}
			}},
		{name: "malformed", body: `{"entity":`, wantErr: "malformed JSON"},
		{name: "not an object", body: `[1,2]`, wantErr: "malformed JSON"},
		{name: "trailing data", body: `{"entity":"a","op":"upsert","rowversion":1,"data":{}} {}`, wantErr: "trailing data"},
		{name: "trailing bracket", body: `{"entity":"a","op":"upsert","rowversion":1,"data":{}}]`, wantErr: "trailing data"},
		{name: "trailing garbage", body: `{"entity":"a","op":"upsert","rowversion":1,"data":{}} x`, wantErr: "trailing data"},
		{name: "no entity", body: `{"op":"upsert","rowversion":1,"data":{}}`, wantErr: `missing "entity"`},
		{name: "subject mismatch", subject: "items", body: `{"entity":"sites","op":"upsert","rowversion":1,"data":{}}`, wantErr: `does not match the subject's entity "items"`},
		{name: "bad op", body: `{"entity":"sites","op":"merge","rowversion":1,"data":{}}`, wantErr: `op "merge"`},
		{name: "no op", body: `{"entity":"sites","rowversion":1,"data":{}}`, wantErr: `missing "op"`},
		{name: "no rowversion", body: `{"entity":"sites","op":"upsert","data":{}}`, wantErr: `missing "rowversion"`},
		{name: "null rowversion", body: `{"entity":"sites","op":"upsert","rowversion":null,"data":{}}`, wantErr: `missing "rowversion"`},
		{name: "no data", body: `{"entity":"sites","op":"upsert","rowversion":1}`, wantErr: `missing "data"`},
		{name: "data not object", body: `{"entity":"sites","op":"upsert","rowversion":1,"data":[1]}`, wantErr: `"data" must be a JSON object`},
		{name: "too large", body: `{"entity":"` + strings.Repeat("x", MaxSize) + `"}`, wantErr: "exceeds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := Decode([]byte(tt.body), tt.subject)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrDecode) {
					t.Fatalf("err = %v, want ErrDecode containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, ev)
		})
	}
}

func TestSubjectEntity(t *testing.T) {
	for subject, want := range map[string]string{
		"apismith.cdc.sites":            "sites",
		"apismith.backfill.work_orders": "work_orders",
		"apismith.cdc.sites.extra":      "",
		"apismith.cdc.":                 "",
		"other.sites":                   "",
	} {
		if got := SubjectEntity(subject); got != want {
			t.Errorf("SubjectEntity(%q) = %q, want %q", subject, got, want)
		}
	}
}

var fuzzZone, _ = time.LoadLocation("America/New_York")

// IFS DATE values are the ERP database's wall clock. Read in its time zone they
// are compared as instants; in the hour a DST fall-back repeats, the publish
// time of a realtime event tells the two instants of one wall clock apart, and
// without one the earlier is taken.
func TestParseRowVersionInTheSourceTimeZone(t *testing.T) {
	zone, err := time.LoadLocation("Europe/Stockholm")
	if err != nil {
		t.Fatal(err)
	}
	parse := func(objversion string, near time.Time) time.Time {
		t.Helper()
		rv, err := ParseRowVersion(json.RawMessage(`"`+objversion+`"`), VersionObjversion, zone, near)
		if err != nil {
			t.Fatal(err)
		}
		return time.UnixMicro(rv.Ord).UTC()
	}
	at := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// Winter and summer: CET is UTC+1, CEST UTC+2.
	if got := parse("20260115120000", time.Time{}); !got.Equal(at("2026-01-15T11:00:00Z")) {
		t.Errorf("winter: %s", got)
	}
	if got := parse("20260715120000", time.Time{}); !got.Equal(at("2026-07-15T10:00:00Z")) {
		t.Errorf("summer: %s", got)
	}
	// 2026-10-25: clocks go back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
	// A change at 02:50 CEST and a later one at 02:10 CET: the later has the lower
	// wall clock, and is still the later instant.
	first := parse("20261025025000", at("2026-10-25T00:50:02Z"))
	second := parse("20261025021000", at("2026-10-25T01:10:01Z"))
	if !first.Equal(at("2026-10-25T00:50:00Z")) || !second.Equal(at("2026-10-25T01:10:00Z")) || !second.After(first) {
		t.Errorf("the repeated hour: first %s, second %s", first, second)
	}
	if got := parse("20261025021000", time.Time{}); !got.Equal(at("2026-10-25T00:10:00Z")) {
		t.Errorf("a repeated wall clock without a publish time: %s, want the earlier instant", got)
	}
	// Never a version from the future: a delete carries the row's last rowversion
	// (02:50 CEST, changed at 00:50Z) and is published at 01:25Z; reading it as
	// 02:50 CET (01:50Z) would make the row's re-creation at 01:40Z look stale.
	if got := parse("20261025025000", at("2026-10-25T01:25:01Z")); !got.Equal(at("2026-10-25T00:50:00Z")) {
		t.Errorf("an old rowversion published late in the repeated hour: %s, want 00:50Z (not after the publish time)", got)
	}
	// A backlog published after the repeated hour: both readings are before the
	// publish time; the later is the one a change made just before could have.
	if got := parse("20261025022000", at("2026-10-25T03:00:00Z")); !got.Equal(at("2026-10-25T01:20:00Z")) {
		t.Errorf("a repeated wall clock published later: %s, want the later reading 01:20Z", got)
	}
	// 2026-03-29: 02:30 does not exist (02:00 CET jumps to 03:00 CEST).
	if got := parse("20260329023000", time.Time{}); !got.Equal(at("2026-03-29T01:30:00Z")) {
		t.Errorf("a skipped wall clock: %s", got)
	}
	// RFC 3339 timestamps carry their offset: the zone does not change them.
	rv, err := ParseRowVersion(json.RawMessage(`"2026-10-25T02:10:00+01:00"`), VersionDate, zone, time.Time{})
	if err != nil || !time.UnixMicro(rv.Ord).Equal(at("2026-10-25T01:10:00Z")) {
		t.Errorf("RFC 3339 in a zoned catalog: %+v %v", rv, err)
	}
}

func TestParseRowVersion(t *testing.T) {
	tests := []struct {
		raw      string
		kind     VersionKind
		wantOrd  int64
		wantText string
		wantErr  bool
	}{
		{`"2026-11-26T10:15:03Z"`, VersionTimestamp, 1795688103000000, "2026-11-26T10:15:03Z", false},
		{`"2026-11-26T11:15:03+01:00"`, VersionTimestamp, 1795688103000000, "2026-11-26T10:15:03Z", false},
		{`"2026-11-26T10:15:03.25Z"`, VersionTimestamp, 1795688103250000, "2026-11-26T10:15:03.25Z", false},
		{`"20261126101503"`, VersionTimestamp, 0, "", true}, // a mix of forms
		{`"20261126101503"`, VersionObjversion, 1795688103000000, "2026-11-26T10:15:03Z", false},
		{`" 20261126101503 "`, VersionObjversion, 1795688103000000, "2026-11-26T10:15:03Z", false},
		{`"2026-11-26T10:15:03Z"`, VersionObjversion, 0, "", true}, // a mix of forms
		{`"20261332101503"`, VersionObjversion, 0, "", true},
		{`"20261126101503"`, VersionDate, 1795688103000000, "2026-11-26T10:15:03Z", false},
		{`"2026-11-26T10:15:03Z"`, VersionDate, 1795688103000000, "2026-11-26T10:15:03Z", false},
		{`20261126101503`, VersionDate, 0, "", true}, // a number for a date entity
		{`"yesterday"`, VersionDate, 0, "", true},
		{`42`, VersionNumber, 42, "42", false},
		{`"42"`, VersionNumber, 42, "42", false},
		{`"2026-11-26T10:15:03Z"`, VersionNumber, 0, "", true}, // a date for a number entity
		{`4.5`, VersionNumber, 0, "", true},
		{`1e3`, VersionNumber, 0, "", true},
		{`99999999999999999999`, VersionNumber, 0, "", true},
		{`true`, VersionNumber, 0, "", true},
		// Escapes go through the decoder (the fast path takes plain strings only).
		{`"2026-11-26T10:15:03\u005a"`, VersionTimestamp, 1795688103000000, "2026-11-26T10:15:03Z", false},
		{`"\u0032\u00306"`, VersionNumber, 206, "206", false},
		{`"4\"2"`, VersionNumber, 0, "", true},
	}
	for _, tt := range tests {
		got, err := ParseRowVersion(json.RawMessage(tt.raw), tt.kind, nil, time.Time{})
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseRowVersion(%s, %s) = %+v, want an error", tt.raw, tt.kind, got)
			}
			continue
		}
		if err != nil || got.Ord != tt.wantOrd || got.Text != tt.wantText {
			t.Errorf("ParseRowVersion(%s, %s) = %+v, %v; want {%d %s}", tt.raw, tt.kind, got, err, tt.wantOrd, tt.wantText)
		}
	}
}

func TestKeyValue(t *testing.T) {
	tests := []struct {
		in   any
		want string
		ok   bool
	}{
		{" S1 ", "S1", true},
		{json.Number("10"), "10", true},
		{json.Number("10.0"), "10", true},
		{json.Number("1e1"), "10", true},
		{json.Number("007"), "7", true},
		{json.Number("2.50"), "2.5", true},
		{json.Number("-0.125"), "-0.125", true},
		{true, "true", true},
		{"", "", false},
		{"   ", "", false},
		{nil, "", false},
		{map[string]any{}, "", false},
	}
	for _, tt := range tests {
		got, ok := KeyValue(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("KeyValue(%#v) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// The bk_hash is stored state: these values must never change. They were computed
// outside Go from the documented encoding, e.g. printf '4:WO-12:10' | sha256sum.
func TestHashKeyGolden(t *testing.T) {
	golden := []struct {
		key  []string
		want string
	}{
		{[]string{"S1"}, "f10c13718105d9a0e784e24ccd95d1ba43eaa2b0ca780354aeb019eb08d12908"},
		{[]string{"WO-1", "10"}, "afc348b1947f9b8c148c303e3d4e623c85956fa498dd61b2fa509c0f39cc73f8"},
		{[]string{""}, "ba768b331fd86cec803be04e56ab2b3d4c0e98ef4ee4fcd4e72ad7cce61a1d1f"},
	}
	for _, g := range golden {
		if got := HashKey(g.key); got != g.want {
			t.Errorf("HashKey(%q) = %s, want %s", g.key, got, g.want)
		}
	}
	// Length prefixes keep different splits apart.
	if HashKey([]string{"ab", "c"}) == HashKey([]string{"a", "bc"}) {
		t.Error("HashKey is ambiguous across field boundaries")
	}
}

func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"entity":"sites","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"CONTRACT":"S1"}}`,
		`{"entity":"sites","op":"delete","rowversion":42,"data":{"CONTRACT":"S1","N":[1,{"a":null}]}}`,
		`{"entity":`, `null`, `{}`, "\x00\xff", `{"data":{"\u0000":"\ud800"}}`,
	} {
		f.Add([]byte(seed), "sites")
	}
	f.Fuzz(func(t *testing.T, body []byte, subject string) {
		ev, err := Decode(body, subject)
		if err != nil {
			if !errors.Is(err, ErrDecode) {
				t.Fatalf("error %v is not ErrDecode", err)
			}
			return
		}
		if ev.Entity == "" || ev.Data == nil || (ev.Op != OpUpsert && ev.Op != OpDelete) {
			t.Fatalf("accepted an incomplete event: %+v", ev)
		}
		for _, kind := range VersionKinds {
			_, _ = ParseRowVersion(ev.RowVersion, kind, nil, time.Time{})
			_, _ = ParseRowVersion(ev.RowVersion, kind, fuzzZone, time.Unix(1792890000, 0))
		}
		for _, v := range ev.Data {
			if s, ok := KeyValue(v); ok {
				_ = HashKey([]string{s})
			}
		}
	})
}

// CheckNumber caps numbers and says nothing of text that is not one: "five" and
// "none" hold an "e" but are not numbers with an exponent.
func TestCheckNumber(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // "" for no error
	}{
		{"42", ""}, {"-3.5e10", ""}, {"1E+100", ""}, {"1e-100", ""}, {".5e3", ""},
		{"1e101", "exponent beyond ±100"}, {"1e-999999", "exponent beyond ±100"}, {"1e99999999999999999999", "exponent beyond ±100"},
		{strings.Repeat("9", 101), "101 characters exceeds"},
		{"five", ""}, {"none", ""}, {"e5", ""}, {"1e", ""}, {"1.2.3e5", ""},
	} {
		err := CheckNumber(tt.in)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("CheckNumber(%q) = %v, want nil", tt.in, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("CheckNumber(%q) = %v, want %q", tt.in, err, tt.want)
		}
	}
}
