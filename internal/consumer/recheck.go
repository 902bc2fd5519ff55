package consumer

import (
	"context"
	"sync"
	"time"
)

// rechecks runs the re-checks that follow commits (apply.Result.Recheck), one
// after another beside the consumer, so that a batch is acked, and the next one
// written, without waiting for them. At most rechecksQueued wait: a consumer
// that commits faster than its re-checks run waits for them.
type rechecks struct {
	queue   chan func(context.Context)
	pending sync.WaitGroup // queued or running
	timeout time.Duration
}

const rechecksQueued = 8

// start runs the re-checks under ctx, each bounded by timeout, until stop.
func (r *rechecks) start(ctx context.Context, timeout time.Duration) {
	r.queue, r.timeout = make(chan func(context.Context), rechecksQueued), timeout
	go func() {
		for f := range r.queue {
			rctx, cancel := context.WithTimeout(ctx, r.timeout)
			f(rctx)
			cancel()
			r.pending.Done()
		}
	}()
}

// add queues f.
func (r *rechecks) add(f func(context.Context)) {
	r.pending.Add(1)
	r.queue <- f
}

// wait returns once the re-checks queued so far have run.
func (r *rechecks) wait() { r.pending.Wait() }

// stop waits for the queued re-checks and ends the worker.
func (r *rechecks) stop() {
	r.wait()
	close(r.queue)
}
