// Package memlimit keeps the Go runtime's soft memory limit at a floor while the
// live heap is small, and above what the live heap needs when it is not.
//
// By default the collector lets the heap grow to twice what survived the last
// collection, and returns freed memory to the system slowly. A service whose
// live heap swings (a backlog: every consumer holding a batch being written
// and one fetched ahead) peaks at twice its largest swing, plus the memory not
// yet returned. A soft limit caps that: near the limit the collector runs
// sooner and returns memory at once. The price is collections during the
// swings only, which are short.
//
// A fixed limit below what the process keeps needing (large events, a catalog
// of many entities, a fragmented heap) would make the collector run all the
// time, up to the half of the CPU the runtime allows it. Two rules raise the
// limit for that:
//
//   - the live heap: the limit is at least the live heap that three quarters
//     of a recent window's readings were at or above (its lower quartile),
//     plus half of what GOGC lets it grow by (GOGC=100: half the live heap),
//     plus the runtime's memory outside the heap. A live heap that is large
//     most of the time gets that room within the window, even when it dips
//     between batches; a swing up does not move the limit.
//   - the collector's pace: when the collections of the last few readings
//     came after less than a tenth of the live heap was allocated each (as
//     if GOGC were below 10; with no limit, GOGC=100, they come after about
//     the live heap), the limit is raised to one and a half times the memory
//     the runtime holds, and kept there for a window. This catches what the
//     first rule cannot see or sees late: a live heap that grows, steps up or
//     oscillates, and a heap whose free gaps (the collector does not move
//     objects) leave the live heap less room than it seems.
package memlimit

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config is how Run keeps the limit.
type Config struct {
	// Floor is the lowest limit, in bytes: the limit while the live heap is
	// small. It counts the heap and the runtime's own memory (stacks, metadata),
	// not the binary's pages.
	Floor int64
	// Every is how often the runtime's figures are read (default 100ms).
	Every time.Duration
	// Window is the span of readings the live heap's rule takes its lower
	// quartile of (the live heap must be large for three quarters of it before
	// the limit is raised for it), and how long a raise for the collector's
	// pace lasts (default 2s).
	Window time.Duration
	// Logger gets a line when the collector's pace raises the limit (at most
	// one a minute, at info level: the floor may be too low for this
	// deployment), and at debug level when the limit leaves the floor and
	// comes back to it (nil: none).
	Logger *slog.Logger
}

// Reading is what the runtime says at one moment (runtime/metrics).
type Reading struct {
	Live  int64 // the live heap at the last collection
	Other int64 // the runtime's memory outside the heap: stacks, metadata
	Held  int64 // all the memory the runtime holds (what a limit counts)
	GOGC  int64 // the GOGC in force (-1: off)
	// Allocs and Cycles are the bytes allocated and the collections finished
	// since the process started.
	Allocs, Cycles int64
}

// Limit is the limit for a floor, the live heap of the window (its lower
// quartile), the runtime's memory outside the heap and the GOGC in force: the
// floor, or room for the live heap to grow by half of what GOGC allows, when
// that needs more.
func Limit(floor, live, other, gogc int64) int64 {
	if gogc < 0 {
		gogc = 100 // off: the limit is then the only trigger; give it the default's room
	}
	return max(floor, live+live*gogc/200+other)
}

const (
	// thrashPace is the bytes allocated per collection, as a share of the live
	// heap, below which the collector is taken to run all the time.
	thrashPace = 0.1
	// smoothing is the number of readings the pace is measured over, and
	// minCycles the fewest collections in them for it to count.
	smoothing = 3
	minCycles = 5
)

// policy turns readings into limits. It is Run's decisions, without the runtime.
type policy struct {
	floor      int64
	lives      []int64                 // the live heaps of the window, a ring
	sorted     []int64                 // lives sorted, for lowerQuartile
	pace       [smoothing + 1][2]int64 // allocations and collections
	n          int
	raised     int64 // a raise for the collector's pace, and how many readings it lasts
	raisedLeft int
}

func newPolicy(floor int64, window int) *policy {
	// The window starts as if the live heap had been empty: it must be large
	// for three quarters of a window before the limit is raised for it.
	n := max(1, window)
	return &policy{floor: floor, lives: make([]int64, n), sorted: make([]int64, 0, n)}
}

// next takes one reading and returns the limit, and whether the collector's
// pace raised it just now.
func (p *policy) next(r Reading) (limit int64, thrashing bool) {
	p.lives[p.n%len(p.lives)] = r.Live
	p.pace[p.n%len(p.pace)] = [2]int64{r.Allocs, r.Cycles}
	p.n++
	if p.n > smoothing {
		then := p.pace[p.n%len(p.pace)] // smoothing readings ago
		allocs, cycles := r.Allocs-then[0], r.Cycles-then[1]
		if cycles >= minCycles && float64(allocs) < thrashPace*float64(cycles)*float64(max(r.Live, 1<<20)) {
			thrashing = true
			p.raised, p.raisedLeft = max(p.raised, r.Held+r.Held/2), len(p.lives)
		}
	}
	limit = Limit(p.floor, lowerQuartile(p.lives, p.sorted), r.Other, r.GOGC)
	if p.raisedLeft > 0 {
		p.raisedLeft--
		limit = max(limit, p.raised)
	} else {
		p.raised = 0
	}
	return limit, thrashing
}

// lowerQuartile is the value a quarter of s is below, sorted in buf.
func lowerQuartile(s, buf []int64) int64 {
	buf = append(buf[:0], s...)
	slices.Sort(buf)
	return buf[len(buf)/4]
}

// Run sets the runtime's soft memory limit every cfg.Every until ctx ends, and
// then puts back the limit it found.
func Run(ctx context.Context, cfg Config) {
	if cfg.Every <= 0 {
		cfg.Every = 100 * time.Millisecond
	}
	if cfg.Window <= 0 {
		cfg.Window = 2 * time.Second
	}
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)

	p := newPolicy(cfg.Floor, int(cfg.Window/cfg.Every))
	m := newReader()
	var set int64
	var told time.Time
	tick := time.NewTicker(cfg.Every)
	defer tick.Stop()
	for {
		r := m.read()
		limit, thrashing := p.next(r)
		if limit != set {
			debug.SetMemoryLimit(limit)
			if cfg.Logger != nil {
				switch {
				case thrashing && time.Since(told) >= time.Minute:
					told = time.Now()
					cfg.Logger.Info("memory limit raised: the collector was running nearly all the time at this limit (a --memory-limit too low for this load?)",
						"limit", inMiB(limit), "live_heap", inMiB(r.Live), "floor", inMiB(cfg.Floor))
				case set != 0 && limit > cfg.Floor && set == cfg.Floor:
					cfg.Logger.Debug("memory limit raised above the floor", "limit", inMiB(limit), "live_heap", inMiB(r.Live))
				case set > cfg.Floor && limit == cfg.Floor:
					cfg.Logger.Debug("memory limit back at the floor", "limit", inMiB(limit))
				}
			}
			set = limit
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// reader reads a Reading off runtime/metrics.
type reader struct{ s []metrics.Sample }

var readingMetrics = []string{
	"/gc/heap/live:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/released:bytes",
	"/gc/gogc:percent",
	"/gc/heap/allocs:bytes",
	"/gc/cycles/total:gc-cycles",
}

func newReader() *reader {
	r := &reader{s: make([]metrics.Sample, len(readingMetrics))}
	for i, n := range readingMetrics {
		r.s[i].Name = n
	}
	return r
}

func (r *reader) read() Reading {
	metrics.Read(r.s)
	u := func(i int) int64 {
		if r.s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return int64(r.s[i].Value.Uint64())
	}
	total, objects, unused, free, released := u(1), u(2), u(3), u(4), u(5)
	gogc := u(6)
	if r.s[6].Value.Kind() == metrics.KindUint64 && r.s[6].Value.Uint64() > math.MaxInt32 {
		gogc = -1 // off
	}
	return Reading{
		Live:   u(0),
		Other:  max(0, total-objects-unused-free-released),
		Held:   total - released,
		GOGC:   gogc,
		Allocs: u(7),
		Cycles: u(8),
	}
}

// inMiB writes n in MiB with one decimal, for the logs.
func inMiB(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + "MiB" }

var units = []struct {
	suffix string
	shift  uint
}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}

// ParseSize reads a size as GOMEMLIMIT writes it: a whole number of bytes with
// an optional suffix B, KiB, MiB, GiB or TiB (44MiB, 1GiB, 0).
func ParseSize(s string) (int64, error) {
	num, shift := strings.TrimSpace(s), uint(0)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, shift = strings.TrimSuffix(num, u.suffix), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("not a size: use e.g. 44MiB, 512MiB or 1GiB (0: no limit)")
	}
	return n << shift, nil
}

// FormatSize writes n in the largest unit of ParseSize that divides it.
func FormatSize(n int64) string {
	for _, u := range units {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}
