package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// VersionKind says how an entity's rowversion is sent. Each entity uses one form;
// an event in another form is an error.
type VersionKind string

const (
	// VersionTimestamp is an Oracle DATE sent as an RFC 3339 string.
	VersionTimestamp VersionKind = "timestamp"
	// VersionObjversion is an Oracle DATE sent as IFS's 14-digit YYYYMMDDHH24MISS
	// objversion string, read as UTC.
	VersionObjversion VersionKind = "objversion"
	// VersionDate accepts either date form, for an APISmith that sends both.
	VersionDate VersionKind = "date"
	// VersionNumber is a NUMBER counter sent as a JSON integer or a string of digits.
	VersionNumber VersionKind = "number"
)

// VersionKinds lists the known forms.
var VersionKinds = []VersionKind{VersionTimestamp, VersionObjversion, VersionDate, VersionNumber}

// RowVersion is a parsed rowversion. Versions of one entity are compared by Ord.
type RowVersion struct {
	// Ord orders versions: microseconds since the Unix epoch for a date, the counter
	// itself for a number.
	Ord int64
	// Text is the canonical form: RFC 3339 in UTC for a date, decimal for a number.
	Text string
}

const objversionLayout = "20060102150405"

// ParseRowVersion parses a rowversion sent in the form kind. Dates order by their
// instant (microseconds), numbers by their value. A rowversion in another form than
// the entity's (a mix) is an error.
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
	case VersionTimestamp, VersionObjversion, VersionDate:
		objversion := len(s) == len(objversionLayout) && isDigits(s)
		var t time.Time
		var err error
		switch {
		case !quoted:
			err = fmt.Errorf("this entity's rowversion is a %s; send it as a JSON string", kind)
		case kind == VersionTimestamp && objversion:
			err = fmt.Errorf("this entity's rowversion is an RFC 3339 timestamp, not a 14-digit objversion (one form per entity)")
		case kind == VersionObjversion && !objversion:
			err = fmt.Errorf("this entity's rowversion is a 14-digit YYYYMMDDHH24MISS objversion (one form per entity)")
		case objversion:
			if t, err = time.ParseInLocation(objversionLayout, s, time.UTC); err != nil {
				err = fmt.Errorf("not a valid YYYYMMDDHH24MISS objversion")
			}
		default:
			if t, err = time.Parse(time.RFC3339Nano, s); err != nil {
				err = fmt.Errorf("not an RFC 3339 timestamp")
			}
		}
		if err != nil {
			return RowVersion{}, fmt.Errorf("rowversion %s: %v", raw, err)
		}
		t = t.UTC()
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

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
