package stream_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/stream"
)

// A fetch is bounded in bytes as well as in messages: a backlog of 500 KB events
// comes a few at a time, however large the batch size, and none is lost or held
// back; small events still come a whole batch at a time.
func TestFetchIsBoundedInBytes(t *testing.T) {
	js, defs := appliedJetStream(t)
	ctx := context.Background()
	big := bytes.Repeat([]byte("x"), 500<<10)
	for i := range 20 {
		if _, err := js.Publish(ctx, "apismith.cdc.items", append([]byte(fmt.Sprint(i)), big...)); err != nil {
			t.Fatal(err)
		}
	}
	f, err := stream.NewFetcher(ctx, js, event.Realtime, defs.Consumers[event.Realtime.Stream]["items"].Durable)
	if err != nil {
		t.Fatal(err)
	}
	f.MaxBytes = 2 << 20
	var got []int
	for len(got) < 20 {
		msgs, err := f.Fetch(ctx, 500, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			t.Fatalf("fetched %d of 20", len(got))
		}
		size := 0
		for _, m := range msgs {
			size += len(m.Delivery.Data)
			var n int
			fmt.Sscan(string(m.Delivery.Data[:2]), &n)
			got = append(got, n)
			if err := m.Ack(); err != nil {
				t.Fatal(err)
			}
		}
		if len(msgs) > 1 && size > f.MaxBytes {
			t.Fatalf("a fetch of %d messages holds %d bytes, over the %d-byte bound", len(msgs), size, f.MaxBytes)
		}
	}
	for i, n := range got {
		if n != i {
			t.Fatalf("messages out of order or lost: %v", got)
		}
	}
	for i := range 300 {
		if _, err := js.Publish(ctx, "apismith.cdc.items", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	// One fetch asks for all 300; on a loaded machine the server may not deliver
	// them all within the short wait for the rest, and the next fetches have the
	// rest. None is lost, and they come many at a time, not one by one.
	fetches, small := 0, 0
	for small < 300 && fetches < 30 {
		msgs, err := f.Fetch(ctx, 500, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		fetches, small = fetches+1, small+len(msgs)
		for _, m := range msgs {
			_ = m.Ack()
		}
	}
	if small != 300 || fetches >= 30 {
		t.Fatalf("300 small events came in %d fetches (%d messages), want all of them, many at a time", fetches, small)
	}
}

// Redelivered messages come back in whole batches, though the consumer's pending
// count does not count them.
func TestFetchTakesRedeliveriesInBatches(t *testing.T) {
	js, defs := appliedJetStream(t)
	ctx := context.Background()
	for i := range 300 {
		if _, err := js.Publish(ctx, "apismith.cdc.sites", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	f, err := stream.NewFetcher(ctx, js, event.Realtime, defs.Consumers[event.Realtime.Stream]["sites"].Durable)
	if err != nil {
		t.Fatal(err)
	}
	// The first delivery, in one fetch or many on a loaded machine (the rest of
	// a batch is waited for briefly); how many is not what this test is about.
	var msgs []pipeline.Message
	for deadline := time.Now().Add(30 * time.Second); len(msgs) < 300 && time.Now().Before(deadline); {
		more, err := f.Fetch(ctx, 500, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, more...)
	}
	if len(msgs) != 300 {
		t.Fatalf("first delivery: %d messages in 30 s", len(msgs))
	}
	for _, m := range msgs {
		if err := m.NakWithDelay(0); err != nil {
			t.Fatal(err)
		}
	}
	fetches, got := 0, 0
	for got < 300 && fetches < 50 {
		msgs, err := f.Fetch(ctx, 500, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		fetches, got = fetches+1, got+len(msgs)
		for _, m := range msgs {
			_ = m.Ack()
		}
	}
	if got != 300 || fetches > 5 {
		t.Fatalf("300 redeliveries came in %d fetches (%d messages), want a few", fetches, got)
	}
}
