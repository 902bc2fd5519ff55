package stream_test

import (
	"context"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/stream"
)

// A fetch waiting for its first message when the consumer stops gives back
// what the server sends it before the wait ends: nothing is left delivered to a
// client that went away (it would come back only after the ack wait).
func TestStoppedFetchGivesBackWhatArrives(t *testing.T) {
	js, _ := appliedJetStream(t)
	ctx := context.Background()
	f, err := stream.NewFetcher(ctx, js, event.Realtime, "syncflow_cdc_sites")
	if err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() {
		msgs, _ := f.Fetch(fctx, 10, time.Second)
		done <- len(msgs)
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	time.Sleep(100 * time.Millisecond)
	if _, err := js.Publish(ctx, "apismith.cdc.sites", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if n := <-done; n != 0 {
		t.Errorf("a stopped fetch returned %d messages", n)
	}
	// The next fetch has it at once, not after the minute of the ack wait.
	msgs, err := f.Fetch(ctx, 10, 2*time.Second)
	if err != nil || len(msgs) != 1 || msgs[0].NumDelivered != 2 {
		t.Fatalf("the next fetch: %d messages (%v), want the one given back", len(msgs), err)
	}
}
