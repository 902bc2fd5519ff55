package backfill

import (
	"testing"
	"time"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func TestRowsPerDay(t *testing.T) {
	for _, tt := range []struct {
		total int64
		days  int
		want  int64
	}{{7_000_000, 7, 1_000_000}, {7_000_001, 7, 1_000_001}, {10, 3, 4}, {1, 7, 1}, {0, 7, 1}, {5, 0, 5}} {
		if got := RowsPerDay(tt.total, tt.days); got != tt.want {
			t.Errorf("RowsPerDay(%d, %d) = %d, want %d", tt.total, tt.days, got, tt.want)
		}
	}
}

func TestWindows(t *testing.T) {
	sthlm := mustLoc(t, "Europe/Stockholm")
	at := func(s string) time.Time {
		ts, err := time.ParseInLocation("2006-01-02 15:04", s, sthlm)
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	night := Window{Start: Clock{19, 0}, End: Clock{7, 0}, Location: sthlm}
	day := Window{Start: Clock{9, 0}, End: Clock{17, 30}, Location: sthlm}
	late := Window{Start: Clock{2, 30}, End: Clock{4, 0}, Location: sthlm}
	tests := []struct {
		name       string
		w          Window
		now        string
		inside     bool
		start, end string // the current span, or the next one when outside
	}{
		{"evening, inside", night, "2026-11-26 21:00", true, "2026-11-26 19:00", "2026-11-27 07:00"},
		{"after midnight, inside", night, "2026-11-27 03:00", true, "2026-11-26 19:00", "2026-11-27 07:00"},
		{"at the start", night, "2026-11-26 19:00", true, "2026-11-26 19:00", "2026-11-27 07:00"},
		{"at the end, outside", night, "2026-11-27 07:00", false, "2026-11-27 19:00", "2026-11-28 07:00"},
		{"afternoon, outside", night, "2026-11-26 12:00", false, "2026-11-26 19:00", "2026-11-27 07:00"},
		{"day window, inside", day, "2026-11-26 10:00", true, "2026-11-26 09:00", "2026-11-26 17:30"},
		{"day window, evening", day, "2026-11-26 18:00", false, "2026-11-27 09:00", "2026-11-27 17:30"},
		// Spring forward 2026-03-29 02:00 -> 03:00: the night is an hour shorter.
		{"DST spring night", night, "2026-03-28 23:00", true, "2026-03-28 19:00", "2026-03-29 07:00"},
		// Fall back 2026-10-25 03:00 -> 02:00: the night is an hour longer.
		{"DST autumn night", night, "2026-10-25 02:30", true, "2026-10-24 19:00", "2026-10-25 07:00"},
		// A window starting inside the spring gap starts when the clock resumes.
		{"start in the gap", late, "2026-03-29 01:00", false, "2026-03-29 03:00", "2026-03-29 04:00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := at(tt.now)
			span, inside := tt.w.Current(now)
			if !inside {
				span = tt.w.Next(now)
			}
			if inside != tt.inside || !span.Start.Equal(at(tt.start)) || !span.End.Equal(at(tt.end)) {
				t.Errorf("at %s: inside=%v %s..%s, want inside=%v %s..%s", tt.now, inside,
					span.Start.In(sthlm).Format("2006-01-02 15:04"), span.End.In(sthlm).Format("2006-01-02 15:04"), tt.inside, tt.start, tt.end)
			}
		})
	}
	// The DST nights last 11 and 13 hours, as the clocks on the wall say.
	spring, _ := night.Current(at("2026-03-28 23:00"))
	autumn, _ := night.Current(at("2026-10-24 23:00"))
	if spring.End.Sub(spring.Start) != 11*time.Hour || autumn.End.Sub(autumn.Start) != 13*time.Hour {
		t.Errorf("DST nights: %v and %v, want 11h and 13h", spring.End.Sub(spring.Start), autumn.End.Sub(autumn.Start))
	}
	// The first 02:30 of the autumn night (before the clocks go back) is the start
	// of an ambiguous window.
	autumnLate := late.occurrence(at("2026-10-25 12:00"))
	if want := time.Date(2026, 10, 25, 0, 30, 0, 0, time.UTC); !autumnLate.Start.Equal(want) {
		t.Errorf("ambiguous start %v, want the earlier 02:30 (%v)", autumnLate.Start.UTC(), want)
	}
}

func TestPlanRun(t *testing.T) {
	utc := Window{Start: Clock{19, 0}, End: Clock{7, 0}, Location: time.UTC}
	ts := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	start := ts("2026-11-26T19:00:00Z")
	for _, tt := range []struct {
		name       string
		now        string
		started    time.Time
		rows       int64
		run        bool
		quota      int64
		nextRunISO string
	}{
		{"inside, fresh window", "2026-11-26T20:00:00Z", time.Time{}, 0, true, 100, ""},
		{"inside, part used", "2026-11-26T22:00:00Z", start, 40, true, 60, ""},
		{"inside, quota used", "2026-11-27T01:00:00Z", start, 100, false, 0, "2026-11-27T19:00:00Z"},
		{"inside, last night's rows", "2026-11-27T20:00:00Z", start, 100, true, 100, ""},
		{"outside", "2026-11-27T12:00:00Z", start, 10, false, 0, "2026-11-27T19:00:00Z"},
	} {
		p := PlanRun(utc, ts(tt.now), 100, tt.started, tt.rows)
		if p.Run != tt.run || p.Quota != tt.quota || (tt.nextRunISO != "" && !p.NextRun.Equal(ts(tt.nextRunISO))) {
			t.Errorf("%s: %+v", tt.name, p)
		}
	}
}

func TestParseWindow(t *testing.T) {
	s, e, err := ParseWindow("19:00-07:00")
	if err != nil || s != (Clock{19, 0}) || e != (Clock{7, 0}) {
		t.Errorf("%v %v %v", s, e, err)
	}
	for _, bad := range []string{"19:00", "25:00-07:00", "19:00-19:00", "7-8", "ab:cd-07:00"} {
		if _, _, err := ParseWindow(bad); err == nil {
			t.Errorf("ParseWindow(%q) accepted", bad)
		}
	}
}
