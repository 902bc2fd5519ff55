package backfill

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
)

// Rows whose key parts differ only in where a separator falls get different
// message ids, so JetStream's duplicate window never drops one for the other.
func TestMessageIDsAreUnambiguous(t *testing.T) {
	cat, err := catalog.Parse([]byte(`
entities:
  pairs:
    key: [A, B]
    target: {table: s.pairs, key: [a, b]}
`))
	if err != nil {
		t.Fatal(err)
	}
	e, _ := cat.Entity("pairs")
	rv := json.RawMessage(`"2026-01-01T00:00:00Z"`)
	msgs, err := messages(e, []SourceRow{
		{RowVersion: rv, Data: map[string]any{"A": "A|B", "B": "1"}},
		{RowVersion: rv, Data: map[string]any{"A": "A", "B": "B|1"}},
		{RowVersion: rv, Data: map[string]any{"A": "A:B", "B": "1"}},
		{RowVersion: rv, Data: map[string]any{"A": "A", "B": "B:1"}},
	}, "oracle_ifs")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		if seen[m.ID] {
			t.Fatalf("two rows share the message id %s", m.ID)
		}
		seen[m.ID] = true
	}
}

// A delete of an extra row is dated just after the ledger's version, in the
// entity's form, so that it reads back after it: in the hour a DST fall-back
// repeats, the next second's wall clock reads as the earlier instant, so the
// delete waits for a wall clock that reads later.
func TestVersionAfter(t *testing.T) {
	stockholm, err := time.LoadLocation("Europe/Stockholm")
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) int64 {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v.UnixMicro()
	}
	for _, c := range []struct {
		kind event.VersionKind
		zone *time.Location
		ord  int64
		want string
	}{
		{event.VersionTimestamp, nil, at("2026-11-26T10:15:03Z"), `"2026-11-26T10:15:03.000001Z"`},
		{event.VersionObjversion, time.UTC, at("2026-11-26T10:15:03Z"), `"20261126101504"`},
		{event.VersionNumber, nil, 41, `42`},
		// 02:30 CET, the second reading of the repeated hour (01:30Z): 02:30:01
		// reads as 00:30:01Z; the first wall clock after the hour is 03:00:00.
		{event.VersionObjversion, stockholm, at("2026-10-25T01:30:00Z"), `"20261025030000"`},
		// The first reading (00:30Z, CEST): the next second reads after it.
		{event.VersionObjversion, stockholm, at("2026-10-25T00:30:00Z"), `"20261025023001"`},
	} {
		e := &catalog.Entity{Name: "items", RowVersion: c.kind, TimeZone: c.zone}
		got, err := versionAfter(e, c.ord)
		if err != nil || string(got) != c.want {
			t.Errorf("%s in %v after %d: %s, %v; want %s", c.kind, c.zone, c.ord, got, err, c.want)
		}
	}
}
