package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
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
	// objversion string, read in the ERP database's time zone.
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
//
// An objversion has no time zone: it is the wall clock of the ERP database, read
// in zone (UTC when nil). In the hour a DST fall-back repeats, one wall clock is
// two instants; near, when set (the time JetStream stored a realtime event, a few
// seconds after the change), chooses the one closest to it, and without it the
// earlier is taken (a backfill copy never claims to be newer than it may be).
func ParseRowVersion(raw json.RawMessage, kind VersionKind, zone *time.Location, near time.Time) (RowVersion, error) {
	raw = bytes.TrimSpace(raw)
	var s string
	quoted := len(raw) > 0 && raw[0] == '"'
	switch {
	case quoted && len(raw) >= 2 && raw[len(raw)-1] == '"' && bytes.IndexByte(raw[1:len(raw)-1], '\\') < 0 && bytes.IndexByte(raw[1:len(raw)-1], '"') < 0:
		// The common case, without a decoder: a string with nothing escaped
		// (the raw value comes from a JSON document that was valid).
		s = strings.TrimSpace(string(raw[1 : len(raw)-1]))
	case quoted:
		if err := json.Unmarshal(raw, &s); err != nil {
			return RowVersion{}, fmt.Errorf("rowversion %s: %v", raw, err)
		}
		s = strings.TrimSpace(s)
	default:
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
			var wall time.Time
			if wall, err = time.ParseInLocation(objversionLayout, s, time.UTC); err != nil {
				err = fmt.Errorf("not a valid YYYYMMDDHH24MISS objversion")
			} else {
				t = inZone(wall, zone, near)
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

// inZone returns the instant whose wall clock in zone is wall's (wall is in UTC
// only to carry the fields). Of two such instants (a repeated hour) it returns
// the latest not after near plus publishSkew (a change is stored after it was
// made, never an hour before), or the earlier when near is zero or both are
// later; a wall clock that does not exist (the hour a DST spring-forward skips)
// is read with the offset before the change.
//
// The latest not after the publish time, not the closest to it: a delete carries
// the row's last rowversion, which may be long before the delete was published,
// and a backlog may be published an hour late; either way the reading after the
// publish time would be a version from the future, which would make every later
// change of the row look stale.
func inZone(wall time.Time, zone *time.Location, near time.Time) time.Time {
	if zone == nil || zone == time.UTC {
		return wall
	}
	// The zone's offsets around that moment; every offset that maps back to the
	// same wall clock gives one candidate instant.
	var candidates []time.Time
	for _, probe := range []time.Duration{-26 * time.Hour, 0, 26 * time.Hour} {
		_, offset := wall.Add(probe).In(zone).Zone()
		t := wall.Add(-time.Duration(offset) * time.Second)
		if t.In(zone).Format(objversionLayout) == wall.Format(objversionLayout) && !slices.ContainsFunc(candidates, t.Equal) {
			candidates = append(candidates, t)
		}
	}
	if len(candidates) == 0 {
		_, offset := wall.Add(-26 * time.Hour).In(zone).Zone()
		return wall.Add(-time.Duration(offset) * time.Second)
	}
	slices.SortFunc(candidates, func(a, b time.Time) int { return a.Compare(b) })
	best := candidates[0]
	if !near.IsZero() {
		for _, c := range candidates {
			if !c.After(near.Add(publishSkew)) {
				best = c
			}
		}
	}
	return best
}

// publishSkew is how far the ERP database's clock may run ahead of the stream's
// (a change seems stored before it was made).
const publishSkew = 5 * time.Minute

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
