package memlimit_test

import (
	"context"
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/memlimit"
)

const mib = 1 << 20

func TestLimit(t *testing.T) {
	for _, c := range []struct{ floor, live, other, want int64 }{
		{44 * mib, 14 * mib, 6 * mib, 44 * mib}, // a backlog's swings: the floor
		{44 * mib, 24 * mib, 8 * mib, 44 * mib}, // exactly at the floor
		{44 * mib, 40 * mib, 6 * mib, 66 * mib}, // a live heap that stays large: room to grow by half
		{0, 10 * mib, 2 * mib, 17 * mib},        // no floor
		{44 * mib, 0, 0, 44 * mib},              // before the first collection
	} {
		if got := memlimit.Limit(c.floor, c.live, c.other, 100); got != c.want {
			t.Errorf("Limit(%d, %d, %d) = %d, want %d", c.floor, c.live, c.other, got, c.want)
		}
	}
}

// TestRunFollowsTheLiveHeap runs the governor in this process: the limit is the
// floor while the heap is small, rises once a large live heap has lasted the
// window, comes back when it is gone, and is put back as it was at the end.
func TestRunFollowsTheLiveHeap(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	const floor = 64 * mib
	go func() {
		defer close(done)
		memlimit.Run(ctx, memlimit.Config{Floor: floor, Every: 10 * time.Millisecond, Window: 200 * time.Millisecond})
	}()
	waitFor := func(what string, ok func(int64) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			runtime.GC()
			limit := debug.SetMemoryLimit(-1)
			if ok(limit) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the limit is %s", what, memlimit.FormatSize(limit))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("a small heap", func(l int64) bool { return l == floor })

	big := make([]byte, 256*mib)
	for i := range big {
		big[i] = byte(i)
	}
	waitFor("a live heap of 256MiB", func(l int64) bool { return l >= 384*mib })
	runtime.KeepAlive(big)
	big = nil

	waitFor("the large heap gone", func(l int64) bool { return l == floor })
	cancel()
	<-done
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("after Run: the limit is %d, want the one before (%d)", got, before)
	}
	if before != math.MaxInt64 {
		t.Logf("the test process started with a limit of %s", memlimit.FormatSize(before))
	}
}

// TestRunRaisesTheLimitForAChurningHeap holds 256 MiB live against a floor of
// 64 MiB while allocating garbage, and never forces a collection: the
// runtime's own collections must show the governor what it needs, well before
// the live heap's rule could (its window is 5 s): the collector's pace.
func TestRunRaisesTheLimitForAChurningHeap(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A long window: the live heap's rule waits 5 s, so a raise sooner is the
	// collector's pace.
	go memlimit.Run(ctx, memlimit.Config{Floor: 64 * mib, Window: 5 * time.Second})

	big := make([][]byte, 256)
	for i := range big {
		big[i] = make([]byte, mib)
		big[i][0] = 1
	}
	var sink []byte
	deadline := time.Now().Add(3500 * time.Millisecond)
	for debug.SetMemoryLimit(-1) < 384*mib {
		if time.Now().After(deadline) {
			t.Fatalf("the limit stayed at %s with 256MiB live", memlimit.FormatSize(debug.SetMemoryLimit(-1)))
		}
		for range 1000 {
			sink = make([]byte, 4096)
		}
		time.Sleep(time.Millisecond)
	}
	runtime.KeepAlive(big)
	_ = sink
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"44MiB": 44 * mib, "0": 0, "1GiB": 1 << 30, "512KiB": 512 << 10, "1000": 1000, "10B": 10, " 2TiB ": 2 << 40} {
		got, err := memlimit.ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"44M", "44MB", "-1MiB", "", "MiB", "1.5GiB", "9999999TiB", "44 MiB"} {
		if _, err := memlimit.ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q): no error", in)
		}
	}
	for n, want := range map[int64]string{44 * mib: "44MiB", 1 << 30: "1GiB", 1500: "1500B", 0: "0B", 3 << 10: "3KiB"} {
		if got := memlimit.FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}
