// Package backfill spreads a full load of a large entity over several nights: the
// schedule math (windows, quotas, next runs), the publisher that pages through the
// APISmith source and publishes each row to apismith.backfill.<entity>, and the
// source's HTTP client.
//
// It decides when a schedule runs and how much it publishes, and owns Schedule;
// its Store (the database) and Publisher (JetStream) are interfaces the adapters
// implement. Its HTTP client of the source is the one I/O it owns; it imports
// only event, catalog and redact of SyncFlow.
//
// # Windows
//
// A window is [Start, End) in wall-clock time of the schedule's time zone; when End
// is not after Start it crosses midnight (19:00-07:00 runs from 19:00 one day to
// 07:00 the next). Wall-clock times are resolved in the time zone on the day they
// fall: a start that does not exist that day (inside a spring-forward gap) begins
// when the clock resumes; one that exists twice (fall back) is the first of the two.
// A window that crosses a DST change is therefore an hour shorter or longer than
// usual, as the operators' clocks say.
//
// # Quota
//
// rows_per_day = ceil(total_rows / days_to_complete). One window (one night)
// publishes at most rows_per_day rows, so a cycle takes days_to_complete nights.
package backfill

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // time zones resolve the same on every machine, containers included

	"github.com/google/uuid"
)

// Schedule is a row of bridge.background_sync_schedule.
type Schedule struct {
	UID           uuid.UUID  `json:"uid"`
	Entity        string     `json:"entity_name"`
	Enabled       bool       `json:"is_enabled"`
	WindowStart   string     `json:"sync_window_start"` // HH:MM
	WindowEnd     string     `json:"sync_window_end"`
	TimeZone      string     `json:"time_zone"`
	Days          int        `json:"days_to_complete"`
	TotalRows     *int64     `json:"total_rows"`
	RowsPerDay    *int64     `json:"rows_per_day"`
	Offset        int64      `json:"current_offset"`
	Cursor        *string    `json:"current_cursor"`
	PageSize      int        `json:"page_size"`
	Continuous    bool       `json:"continuous"`
	CycleStarted  *time.Time `json:"cycle_started_at"`
	WindowStarted *time.Time `json:"window_started_at"`
	WindowRows    int64      `json:"window_rows"`
	LastRun       *time.Time `json:"last_run_at"`
	NextRun       *time.Time `json:"next_run_at"`
	Completed     *time.Time `json:"completed_at"`
	LastError     *string    `json:"last_error"`
	// Mode is publish (every row, over the cycle's nights) or verify (each
	// night, compare the entity with the source and publish the drifted rows).
	Mode string `json:"mode"`
}

// The modes of a schedule.
const (
	ModePublish = "publish"
	ModeVerify  = "verify"
)

// Settings are what `syncflow schedule set` changes; nil leaves a setting.
type Settings struct {
	WindowStart, WindowEnd, TimeZone *string
	Days, PageSize                   *int
	Continuous                       *bool
	Mode                             *string
}

// Clock is the wall time of a window boundary.
type Clock struct{ Hour, Minute int }

func (c Clock) String() string { return fmt.Sprintf("%02d:%02d", c.Hour, c.Minute) }

// ParseClock reads HH:MM (or HH:MM:SS, seconds ignored).
func ParseClock(s string) (Clock, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Clock{}, fmt.Errorf("%q is not a time of day (HH:MM)", s)
	}
	h, err1 := strconv.Atoi(parts[0])
	m, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || h < 0 || h > 23 || m < 0 || m > 59 {
		return Clock{}, fmt.Errorf("%q is not a time of day (HH:MM)", s)
	}
	return Clock{h, m}, nil
}

// ParseWindow reads "HH:MM-HH:MM".
func ParseWindow(s string) (Clock, Clock, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return Clock{}, Clock{}, fmt.Errorf("%q is not a window: use START-END, e.g. 19:00-07:00", s)
	}
	start, err := ParseClock(a)
	if err != nil {
		return Clock{}, Clock{}, err
	}
	end, err := ParseClock(b)
	if err != nil {
		return Clock{}, Clock{}, err
	}
	if start == end {
		return Clock{}, Clock{}, fmt.Errorf("window %q is empty: start and end are the same", s)
	}
	return start, end, nil
}

// Window is a daily window in a time zone.
type Window struct {
	Start, End Clock
	Location   *time.Location
}

// crossesMidnight reports whether the window ends on the day after it starts.
func (w Window) crossesMidnight() bool {
	return w.End.Hour*60+w.End.Minute <= w.Start.Hour*60+w.Start.Minute
}

// wall returns the instant the clock shows c on the given local date: the first
// instant after a spring-forward gap, the earlier of two in a fall-back.
func wall(y int, m time.Month, d int, c Clock, loc *time.Location) time.Time {
	t := time.Date(y, m, d, c.Hour, c.Minute, 0, 0, loc)
	if t.Hour() == c.Hour && t.Minute() == c.Minute {
		if earlier := t.Add(-time.Hour); earlier.Hour() == c.Hour && earlier.Minute() == c.Minute && earlier.Day() == d {
			return earlier
		}
		return t
	}
	// In a gap: walk from before it to the first instant the clock is past c.
	probe := time.Date(y, m, d, 0, 0, 0, 0, loc)
	for probe.Day() == d || probe.Before(t) {
		if probe.Hour()*60+probe.Minute() >= c.Hour*60+c.Minute {
			return probe
		}
		probe = probe.Add(time.Minute)
	}
	return t
}

// Span is one occurrence of a window.
type Span struct{ Start, End time.Time }

// Contains reports whether t is inside the span.
func (s Span) Contains(t time.Time) bool { return !t.Before(s.Start) && t.Before(s.End) }

// occurrence returns the window that starts on the local date of day.
func (w Window) occurrence(day time.Time) Span {
	y, m, d := day.In(w.Location).Date()
	start := wall(y, m, d, w.Start, w.Location)
	ey, em, ed := y, m, d
	if w.crossesMidnight() {
		next := time.Date(y, m, d+1, 12, 0, 0, 0, w.Location)
		ey, em, ed = next.Date()
	}
	return Span{Start: start, End: wall(ey, em, ed, w.End, w.Location)}
}

// Current returns the window occurrence containing t, or false when t is outside
// every window.
func (w Window) Current(t time.Time) (Span, bool) {
	local := t.In(w.Location)
	for _, offset := range []int{-1, 0} {
		day := time.Date(local.Year(), local.Month(), local.Day()+offset, 12, 0, 0, 0, w.Location)
		if s := w.occurrence(day); s.Contains(t) {
			return s, true
		}
	}
	return Span{}, false
}

// Next returns the first window occurrence that starts after t.
func (w Window) Next(t time.Time) Span {
	local := t.In(w.Location)
	for offset := 0; ; offset++ {
		day := time.Date(local.Year(), local.Month(), local.Day()+offset, 12, 0, 0, 0, w.Location)
		if s := w.occurrence(day); s.Start.After(t) {
			return s
		}
	}
}

// RowsPerDay is ceil(total / days).
func RowsPerDay(total int64, days int) int64 {
	if days <= 0 {
		days = 1
	}
	if total <= 0 {
		return 1
	}
	return (total + int64(days) - 1) / int64(days)
}

// Plan says what a run may do now.
type Plan struct {
	// Window is the occurrence the run works in (the current one when Run).
	Window Span
	// Run is true when the run may publish now; Quota rows at most.
	Run   bool
	Quota int64
	// NextRun is when to come back if not Run.
	NextRun time.Time
}

// PlanRun decides, at now, for a window, a per-night quota, and the rows already
// published in the window that started at windowStarted (zero when none).
func PlanRun(w Window, now time.Time, rowsPerDay int64, windowStarted time.Time, windowRows int64) Plan {
	span, inside := w.Current(now)
	if !inside {
		next := w.Next(now)
		return Plan{Window: next, NextRun: next.Start}
	}
	used := int64(0)
	if windowStarted.Equal(span.Start) {
		used = windowRows
	}
	if used >= rowsPerDay {
		next := w.Next(now)
		return Plan{Window: span, NextRun: next.Start}
	}
	return Plan{Window: span, Run: true, Quota: rowsPerDay - used}
}
