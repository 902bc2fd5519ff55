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
// A fixed limit below what the live heap keeps needing (large events, a
// catalog of many entities) would make the collector run all the time, up to
// the half of the CPU the runtime allows it. So the limit is raised to one and
// a half times the smallest live heap of a recent window, plus the runtime's
// own memory: a live heap that stays large gets room to grow by half within
// the window, while a swing does not move the limit.
package memlimit

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"runtime/metrics"
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
	// Every is how often the live heap is read (default 100ms).
	Every time.Duration
	// Window is how long the live heap must stay large before the limit is
	// raised for it (default 2s).
	Window time.Duration
	// Logger gets a line (at debug level) when the limit leaves the floor and
	// when it comes back to it (nil: none).
	Logger *slog.Logger
}

// Limit is the limit for a floor, the smallest live heap of the window and the
// runtime's memory outside the heap: the floor, or room for the live heap to
// grow by half when that needs more (the collector then runs at most twice as
// often as with no limit, where it lets the heap double).
func Limit(floor, live, other int64) int64 {
	return max(floor, live+live/2+other)
}

// Run sets the runtime's soft memory limit to Limit every cfg.Every until ctx
// ends, and then puts back the limit it found.
func Run(ctx context.Context, cfg Config) {
	if cfg.Every <= 0 {
		cfg.Every = 100 * time.Millisecond
	}
	if cfg.Window <= 0 {
		cfg.Window = 2 * time.Second
	}
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)

	samples := make([]int64, max(1, int(cfg.Window/cfg.Every)))
	for i := range samples {
		samples[i] = math.MaxInt64
	}
	m := newReader()
	set := int64(0)
	tick := time.NewTicker(cfg.Every)
	defer tick.Stop()
	for i := 0; ; i++ {
		live, other := m.read()
		samples[i%len(samples)] = live
		limit := Limit(cfg.Floor, smallest(samples), other)
		if limit != set {
			debug.SetMemoryLimit(limit)
			if cfg.Logger != nil && set != 0 && (limit == cfg.Floor) != (set == cfg.Floor) {
				if limit > cfg.Floor {
					cfg.Logger.Debug("memory limit raised above the floor for the live heap", "limit", mib(limit), "live_heap", mib(live))
				} else {
					cfg.Logger.Debug("memory limit back at the floor", "limit", mib(limit))
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

func smallest(s []int64) int64 {
	out := int64(math.MaxInt64)
	for _, v := range s {
		out = min(out, v)
	}
	return out
}

// reader reads the live heap and the runtime's memory outside the heap.
type reader struct{ s []metrics.Sample }

const (
	liveHeap     = "/gc/heap/live:bytes"
	total        = "/memory/classes/total:bytes"
	heapObjects  = "/memory/classes/heap/objects:bytes"
	heapUnused   = "/memory/classes/heap/unused:bytes"
	heapFree     = "/memory/classes/heap/free:bytes"
	heapReleased = "/memory/classes/heap/released:bytes"
)

func newReader() *reader {
	names := []string{liveHeap, total, heapObjects, heapUnused, heapFree, heapReleased}
	r := &reader{s: make([]metrics.Sample, len(names))}
	for i, n := range names {
		r.s[i].Name = n
	}
	return r
}

func (r *reader) read() (live, other int64) {
	metrics.Read(r.s)
	v := func(i int) int64 {
		if r.s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return int64(r.s[i].Value.Uint64())
	}
	return v(0), max(0, v(1)-v(2)-v(3)-v(4)-v(5))
}

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

// mib writes n in MiB with one decimal, for the logs.
func mib(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + "MiB" }

// FormatSize writes n in the largest unit of ParseSize that divides it.
func FormatSize(n int64) string {
	for _, u := range units {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}
