package backfill

import (
	"encoding/json"
	"testing"

	"github.com/syncflow/syncflow/internal/catalog"
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
