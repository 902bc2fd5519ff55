package store

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/normalize"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// writeRows returns n rows of realistic size whose hashes are drawn from keys
// distinct ones (fewer keys than rows: ties); each row's Seq is its position.
func writeRows(r *rand.Rand, n, keys int) []apply.WriteRow {
	rows := make([]apply.WriteRow, n)
	for i := range rows {
		key := []string{"SITE1", fmt.Sprintf("PART-%06d", r.IntN(keys))}
		fields := map[string]any{}
		for f := range 16 {
			fields[fmt.Sprintf("FIELD_%02d", f)] = fmt.Sprintf("value %d of row %d", f, i)
		}
		rows[i] = apply.WriteRow{
			LedgerRow: apply.LedgerRow{
				Record:  normalize.Record{Key: key, BKHash: event.HashKey(key), Fields: fields},
				Version: pipeline.Version{Ord: int64(i), Seq: uint64(i), Hash: []byte("0123456789abcdef0123456789abcdef")},
			},
			Target: true,
			Row:    fields,
		}
	}
	return rows
}

// The rows a Write takes are put in key order as a stable sort would put them,
// ties in the order given, without touching the caller's slice.
func TestInKeyOrderSortsStably(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range []struct{ n, keys int }{{0, 1}, {1, 1}, {2, 1}, {7, 3}, {500, 40}, {500, 1000}, {1000, 2}} {
		rows := writeRows(r, size.n, size.keys)
		given := slices.Clone(rows)
		want := slices.Clone(rows)
		slices.SortStableFunc(want, func(a, b apply.WriteRow) int { return strings.Compare(a.Record.BKHash, b.Record.BKHash) })

		got := inKeyOrder(rows)
		if len(got) != len(want) {
			t.Fatalf("%d rows: got %d back", size.n, len(got))
		}
		for i := range want {
			if got[i].Record.BKHash != want[i].Record.BKHash || got[i].Version.Seq != want[i].Version.Seq {
				t.Fatalf("%d rows over %d keys: position %d holds row %d (%s), want row %d (%s)",
					size.n, size.keys, i, got[i].Version.Seq, got[i].Record.BKHash, want[i].Version.Seq, want[i].Record.BKHash)
			}
		}
		for i := range given {
			if rows[i].Version.Seq != given[i].Version.Seq {
				t.Fatalf("%d rows: the caller's slice was reordered at %d", size.n, i)
			}
		}
	}
}

// BenchmarkKeyOrder compares putting a batch of 500 rows in key order by a
// stable sort of the rows (as Write did) with inKeyOrder.
func BenchmarkKeyOrder(b *testing.B) {
	rows := writeRows(rand.New(rand.NewPCG(1, 2)), 500, 100000)
	b.Run("stable-sort-of-rows", func(b *testing.B) {
		for b.Loop() {
			c := slices.Clone(rows)
			slices.SortStableFunc(c, func(a, b apply.WriteRow) int { return strings.Compare(a.Record.BKHash, b.Record.BKHash) })
		}
	})
	b.Run("inKeyOrder", func(b *testing.B) {
		for b.Loop() {
			inKeyOrder(rows)
		}
	})
}

// A shape is used again only for a row that carries exactly its fields: rows
// that drop a column, add one, swap an unmapped field for another or carry the
// same number of different fields each get their own columns, and every
// unmapped field of every row is noted under its record's hash.
func TestRowShapesFollowEachRow(t *testing.T) {
	e := &catalog.Entity{Name: "items", Target: catalog.Target{Schema: "s", Table: "items", Key: []string{"part_no"}}}
	tg := &target{entity: e, key: e.Target.Key, columns: map[string]bool{"part_no": true, "descr": true, "qty": true}}
	rows := []map[string]any{
		{"part_no": "A", "descr": "a", "qty": 1, "extra": "x"},
		{"part_no": "B", "descr": "b", "qty": 2, "extra": "y"},
		{"part_no": "BB", "descr": "bb", "qty": 2, "other": "s"},
		{"part_no": "C", "descr": "c", "extra": "z"},
		{"part_no": "D", "descr": "d", "qty": 4, "other": "w"},
		{"part_no": "E", "descr": "e", "qty": 5, "other": "v", "extra": "u"},
		{"part_no": "F", "descr": "f", "qty": 6},
		{"part_no": 7, "descr": "g", "qty": 7, "extra": "t"},
	}
	tx := &tx{}
	now := time.Now()
	var shape *rowShape
	wantNotes := map[[3]string]any{}
	for i, row := range rows {
		shape = tx.shapeNoting(tg, row, fmt.Sprint("hash of ", row["part_no"]), shape, now)
		if want := tg.writable(row); !slices.Equal(shape.cols, want) {
			t.Errorf("row %d: columns %v, want %v", i, shape.cols, want)
		}
		if want := "upsert " + strings.Join(tg.writable(row), ","); shape.sig != want {
			t.Errorf("row %d: signature %q, want %q", i, shape.sig, want)
		}
		for f, v := range row {
			if !tg.columns[f] {
				wantNotes[[3]string{"items", strings.ToUpper(f), fmt.Sprint("hash of ", row["part_no"])}] = v
			}
		}
	}
	got := map[[3]string]any{}
	for _, n := range tx.unmapped.notes {
		got[n.seen] = n.value
	}
	if !maps.Equal(got, wantNotes) {
		t.Errorf("notes %v, want %v", got, wantNotes)
	}
}
