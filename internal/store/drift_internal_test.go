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
