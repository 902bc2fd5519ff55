package main

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// TestLimitMemoryFollowsTheHeap holds 256 MiB live in this process while
// allocating garbage, with run's limit at a floor of 64 MiB: the limit must be
// raised for it (a fixed limit would leave the collector running all the
// time), and put back when run stops.
func TestLimitMemoryFollowsTheHeap(t *testing.T) {
	const mib = 1 << 20
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	ctx, cancel := context.WithCancel(context.Background())
	limitMemory(ctx, 64*mib, "", slog.New(slog.NewTextHandler(io.Discard, nil)))

	deadline := time.Now().Add(5 * time.Second)
	for debug.SetMemoryLimit(-1) != 64*mib {
		if time.Now().After(deadline) {
			t.Fatalf("the limit is %d, want the floor", debug.SetMemoryLimit(-1))
		}
		time.Sleep(10 * time.Millisecond)
	}
	big := make([][]byte, 256)
	for i := range big {
		big[i] = make([]byte, mib)
		big[i][0] = 1
	}
	var sink []byte
	for deadline = time.Now().Add(10 * time.Second); debug.SetMemoryLimit(-1) < 384*mib; {
		if time.Now().After(deadline) {
			t.Fatalf("the limit stayed at %d with 256 MiB live", debug.SetMemoryLimit(-1))
		}
		for range 1000 {
			sink = make([]byte, 4096)
		}
		time.Sleep(time.Millisecond)
	}
	runtime.KeepAlive(big)
	_ = sink

	cancel()
	for deadline = time.Now().Add(5 * time.Second); debug.SetMemoryLimit(-1) != before; {
		if time.Now().After(deadline) {
			t.Fatalf("after the stop, the limit is %d, want %d", debug.SetMemoryLimit(-1), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
