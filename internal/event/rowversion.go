package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// VersionKind says how an entity's rowversion is sent: a DATE or a NUMBER counter.
type VersionKind string

const (
	VersionDate   VersionKind = "date"
	VersionNumber VersionKind = "number"
)

// RowVersion is a parsed rowversion. Versions of one entity are compared by Ord.
type RowVersion struct {
	// Ord orders versions: microseconds since the Unix epoch for a date, the counter
	// itself for a number.
	Ord int64
	// Text is the canonical form: RFC 3339 in UTC for a date, decimal for a number.
	Text string
}

const objversionLayout = "20060102150405"

// ParseRowVersion parses a rowversion as sent. A date is an RFC 3339 string or IFS's
// 14-digit YYYYMMDDHH24MISS objversion (read as UTC); a number is a JSON integer or a
// string of digits. Anything else, including a number for a date entity or a date
// for a number entity, is an error.
func ParseRowVersion(raw json.RawMessage, kind VersionKind) (RowVersion, error) {
	raw = bytes.TrimSpace(raw)
	var s string
	quoted := len(raw) > 0 && raw[0] == '"'
	if quoted {
		if err := json.Unmarshal(raw, &s); err != nil {
			return RowVersion{}, fmt.Errorf("rowversion %s: %v", raw, err)
		}
		s = strings.TrimSpace(s)
	} else {
		s = string(raw)
	}
	switch kind {
	case VersionDate:
		if !quoted {
			return RowVersion{}, fmt.Errorf("rowversion %s: this entity's rowversion is a date; send it as an RFC 3339 or 14-digit YYYYMMDDHH24MISS string", raw)
		}
		t, err := parseDate(s)
		if err != nil {
			return RowVersion{}, fmt.Errorf("rowversion %q: %v", s, err)
		}
		return RowVersion{Ord: t.UnixMicro(), Text: t.Format(time.RFC3339Nano)}, nil
	case VersionNumber:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return RowVersion{}, fmt.Errorf("rowversion %s: this entity's rowversion is an integer counter", raw)
		}
		return RowVersion{Ord: n, Text: strconv.FormatInt(n, 10)}, nil
	default:
		return RowVersion{}, fmt.Errorf("rowversion: unknown kind %q", kind)
	}
}

func parseDate(s string) (time.Time, error) {
	if len(s) == len(objversionLayout) && isDigits(s) {
		t, err := time.ParseInLocation(objversionLayout, s, time.UTC)
		if err != nil {
			return time.Time{}, fmt.Errorf("not a valid YYYYMMDDHH24MISS objversion")
		}
		return t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("neither RFC 3339 nor a 14-digit YYYYMMDDHH24MISS objversion")
	}
	return t.UTC(), nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
