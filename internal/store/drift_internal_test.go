package store

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// At most MaxUnmappedFields fields are counted per entity; the others are
// counted together, so that an event with a thousand made-up fields cannot grow
// the table or the metrics without bound. Samples are cut and made valid text.
func TestDriftIsBounded(t *testing.T) {
	d := newDrift()
	at := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	for i := range MaxUnmappedFields + 20 {
		d.note("items", fmt.Sprintf("F%03d", i), i, at)
	}
	d.note("items", "F000", "again", at.Add(time.Second))
	d.note("sites", "WIDE", strings.Repeat("é", 300)+"\x00", at)
	taken := d.take()
	if n := len(taken["items"]); n != MaxUnmappedFields+1 {
		t.Errorf("%d fields of items, want %d and %s", n, MaxUnmappedFields, OtherField)
	}
	if o := taken["items"][OtherField]; o == nil || o.count != 20 {
		t.Errorf("%s of items: %+v, want 20 values", OtherField, o)
	}
	if f := taken["items"]["F000"]; f.count != 2 || f.sample != "0" || !f.last.Equal(at.Add(time.Second)) {
		t.Errorf("F000: %+v", f)
	}
	if s := taken["sites"]["WIDE"].sample; len(s) > 203 || strings.Contains(s, "\x00") || !strings.HasSuffix(s, "…") {
		t.Errorf("the sample is not cut to valid text: %q", s)
	}
	// Fields already counted stay counted under their name after a flush.
	d.note("items", "F001", 1, at)
	d.note("items", "NEW", 1, at)
	taken = d.take()
	if taken["items"]["F001"] == nil || taken["items"][OtherField] == nil || taken["items"]["NEW"] != nil {
		t.Errorf("after a flush: %v", taken["items"])
	}
	if got := d.total[[2]string{"items", OtherField}]; got != 21 {
		t.Errorf("total of %s: %d, want 21", OtherField, got)
	}
}

// Transactions are merged in the order they commit, not the order they saw
// their events: first and last seen stay the least and the greatest, across a
// flush that failed and was put back, so the table's check (last >= first)
// never drops a flush.
func TestDriftTimesOutOfOrder(t *testing.T) {
	d := newDrift()
	at := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	d.note("items", "F", 1, at.Add(2*time.Second))
	d.note("items", "F", 1, at)
	d.note("items", "F", 1, at.Add(time.Second))
	taken := d.take()
	if f := taken["items"]["F"]; !f.first.Equal(at) || !f.last.Equal(at.Add(2*time.Second)) || f.count != 3 {
		t.Errorf("F: first %v last %v count %d", f.first, f.last, f.count)
	}
	d.note("items", "F", 1, at.Add(-time.Second))
	d.putBack(taken)
	if f := d.take()["items"]["F"]; !f.first.Equal(at.Add(-time.Second)) || !f.last.Equal(at.Add(2*time.Second)) || f.count != 4 {
		t.Errorf("F after a put-back: first %v last %v count %d", f.first, f.last, f.count)
	}
}
