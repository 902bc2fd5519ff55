package consumer

import (
	"context"
	"sync"
	"time"

	"github.com/syncflow/syncflow/internal/pipeline"
)

// heldMessages are the messages a consumer holds: fetched and not yet settled.
type heldMessages struct {
	mu      sync.Mutex
	next    uint64
	batches map[uint64]*heldBatch
}

type heldBatch struct {
	msgs    []pipeline.Message
	touched time.Time // fetched, or last kept alive
}

func (h *heldMessages) add(msgs []pipeline.Message) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.batches == nil {
		h.batches = map[uint64]*heldBatch{}
	}
	h.next++
	h.batches[h.next] = &heldBatch{msgs: msgs, touched: time.Now()}
	return h.next
}

func (h *heldMessages) remove(id uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.batches, id)
}

// keepAlive sends InProgress for every message held longer than every, every
// every/2, until ctx ends.
func (h *heldMessages) keepAlive(ctx context.Context, every time.Duration) {
	every = max(every, 20*time.Millisecond) // an ack wait of a few milliseconds must not make a busy loop
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			h.mu.Lock()
			var due [][]pipeline.Message
			for _, b := range h.batches {
				if now.Sub(b.touched) >= every {
					b.touched = now
					due = append(due, b.msgs)
				}
			}
			h.mu.Unlock()
			for _, msgs := range due {
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	}
}
