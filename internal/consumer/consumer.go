// Package consumer is the one loop that takes messages from a fetcher to the
// database: fetch a batch, run the pipeline, write it in one transaction, and only
// then ack. While the consumer is behind (its fetches come back full), fetching
// the next batch overlaps writing the current one, and at most three batches of
// messages are held at once, however large the backlog. Once it is caught up (a
// fetch came back short of a batch), the next fetch waits until the current
// batch is written, so that it takes everything that arrived meanwhile: batches
// follow the backlog, and an event waits for one write ahead of it, not two.
//
// The service runs one Consumer per entity and stream; replay runs one over a
// Bounded fetcher that ends with its range; the stray drain (Strays) runs one
// with no entity over each subject no catalog entity owns.
//
// # Settling messages
//
// One switch (decide, carried out by settle) says what happens to the messages
// of a batch:
//
//   - the transaction committed: ack every message, dead letters included (they are
//     in bridge.failed_records now);
//   - the write failed: the database is to blame, never the rows (rows the target
//     rejects are isolated inside the transaction and dead-lettered there). The
//     consumer holds the batch, takes no new work and retries it in-process with
//     exponential backoff (at most 5s apart) until it commits, whatever the
//     failure: a database that refuses connections, is read-only after a
//     failover, rejects rotated credentials, runs out of resources, times out, or
//     fails in a way SyncFlow does not know. Nothing is dead-lettered because of an
//     outage, and holding the batch (rather than letting JetStream redeliver it)
//     keeps the delivery count from creeping towards MaxDeliver during a long one.
//     With RetryFor set, it gives up after that long and naks with a delay instead,
//     as it does with the messages of a fetch that failed;
//   - shutdown: nak at once, never a dead letter.
//
// The re-check after a commit (children waiting for the parents the batch
// applied, or for the parents of the children it parked, that can go now) runs
// after the ack, beside the loop (rechecks): the ack and the next batch do not
// wait for it, and the rolling batch it counts in is closed only after it.
//
// # Keeping held messages alive
//
// Every message the consumer holds, in the batch being written and in the batches
// fetched ahead of it, gets InProgress every Heartbeat, so that JetStream does not
// redeliver it however long a write or an outage takes.
//
// # Timeouts
//
// Each attempt to write a batch has a deadline (BatchTimeout), and every statement
// a timeout of its own (see store.Config). A batch that times out EscalateAfter
// times is not retried the same way for ever: it is logged as an error, counted,
// and written with its rows isolated (apply.Batch.IsolateTimeouts), so that rows
// that keep timing out become dead letters at stage write and the rest commits.
//
// # Shutdown
//
// When ctx ends the loop stops fetching; a batch being written gets ShutdownGrace to
// commit (and is acked), fetched batches not yet written are nakked.
package consumer

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Writer commits prepared batches (apply.Applier, with store.Store's CloseBatch).
type Writer interface {
	ApplyBatch(ctx context.Context, b apply.Batch) (apply.Result, error)
	CloseBatch(ctx context.Context, uid uuid.UUID, failure error) error
}

// Rules holds the current mapping rules; a batch takes one snapshot and keeps it.
type Rules struct{ p atomic.Pointer[mapping.Set] }

// Load returns the current rules; a nil Rules has none.
func (r *Rules) Load() *mapping.Set {
	if r == nil {
		return &mapping.Set{}
	}
	return r.p.Load()
}

// Store replaces the rules for the batches that start after it.
func (r *Rules) Store(s *mapping.Set) { r.p.Store(s) }

// Consumer runs one durable consumer of one entity (or, with no Entity, of
// subjects no catalog entity owns).
type Consumer struct {
	// Entity is the catalog entity consumed; nil for subjects no entity owns,
	// whose messages can only become dead letters.
	Entity *catalog.Entity
	// Catalog is the catalog in force: each batch takes the current one, and
	// the current version of Entity in it.
	Catalog *catalog.Live
	Source  event.Source
	Fetcher Fetcher
	Writer  Writer
	// Rules are the mapping rules batches are prepared with (nil: none).
	Rules  *Rules
	Config Config
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Gate, when set, is a semaphore the consumer holds while it writes a batch:
	// the backfill consumers share a small one, so that a night's backfill takes
	// only its share of the database and realtime batches never queue behind it.
	Gate chan struct{}

	batchUID   uuid.UUID
	batchStart time.Time
	batchNew   bool // no transaction counted in batchUID has committed yet
	held       heldMessages
	rechecks   rechecks
}

type fetched struct {
	msgs []pipeline.Message
	err  error
	id   uint64 // in held
	end  error  // the fetch failure that ended the fetcher (End)
	// handled is closed once the batch is written and settled.
	handled chan struct{}
}

// Run consumes until ctx ends, or until the fetcher ends (ErrEnd), then closes its
// rolling batch and returns nil, or the failure that ended the fetcher (End).
func (c *Consumer) Run(ctx context.Context) error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	c.Config = c.Config.withDefaults()
	log := c.Logger.With("entity", c.entityName(), "source", c.Source.Name)
	defer c.closeBatch(log, nil)
	hctx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHeartbeat()
	go c.held.keepAlive(hctx, c.Config.Heartbeat)

	// Writes outlive ctx by ShutdownGrace, so that a batch being written commits.
	wctx, cancelWrites := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWrites()
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(c.Config.ShutdownGrace, cancelWrites) })
	defer stopGrace()
	// The re-checks after commits run under the writes' context, and are waited
	// for before the rolling batch they count in is closed.
	c.rechecks.start(wctx, c.Config.BatchTimeout)
	defer c.rechecks.stop()

	batches := make(chan fetched, 1)
	go c.prefetch(ctx, log, batches)
	var ended error
	for f := range batches {
		c.handle(ctx, wctx, log, f)
		c.held.remove(f.id)
		if f.handled != nil {
			close(f.handled)
		}
		if f.end != nil {
			ended = f.end
		}
	}
	return ended
}

// handle writes one fetched batch, unless its fetch failed or the consumer is
// stopping, and settles its messages.
func (c *Consumer) handle(ctx, wctx context.Context, log *slog.Logger, f fetched) {
	if len(f.msgs) == 0 {
		return
	}
	if err := cmp.Or(f.err, ctx.Err()); err != nil {
		c.settle(ctx, log, f.msgs, apply.Result{}, err)
		return
	}
	// The lanes that committed first: a lane given up closes the rolling batch,
	// after the re-checks that count in it.
	lanes := c.process(ctx, wctx, log, f.msgs)
	for _, w := range lanes {
		if w.err == nil {
			c.settle(ctx, log, w.msgs, w.res, nil)
			if w.res.Recheck != nil {
				c.rechecks.add(w.res.Recheck)
			}
		}
	}
	for _, w := range lanes {
		if w.err != nil {
			c.settle(ctx, log, w.msgs, w.res, w.err)
		}
	}
}

// written is what became of the messages of one lane of a batch.
type written struct {
	msgs []pipeline.Message
	b    apply.Batch
	res  apply.Result
	err  error
}

func (c *Consumer) enter(ctx context.Context) bool {
	if c.Gate == nil {
		return true
	}
	select {
	case c.Gate <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *Consumer) leave() {
	if c.Gate != nil {
		<-c.Gate
	}
}

// prefetch fetches the next batch while the current one is written, and closes
// batches when ctx ends or the fetcher does.
func (c *Consumer) prefetch(ctx context.Context, log *slog.Logger, batches chan<- fetched) {
	defer close(batches)
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond), backoff.WithMaxInterval(10*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		msgs, err := c.Fetcher.Fetch(ctx, c.Config.BatchSize, c.Config.FetchWait)
		var failed endError
		switch {
		case errors.As(err, &failed):
			batches <- fetched{msgs: msgs, err: givenUp{failed.cause}, end: failed.cause}
			return
		case errors.Is(err, ErrEnd):
			// What came with the end is the last batch.
			batches <- fetched{msgs: msgs, id: c.held.add(msgs)}
			return
		case err != nil && ctx.Err() == nil:
			wait := bo.NextBackOff()
			log.Warn("fetch failed; retrying", "err", err, "retry_in", wait)
			batches <- fetched{msgs: msgs, err: givenUp{err}}
			sleep(ctx, wait)
			continue
		}
		bo.Reset()
		if len(msgs) == 0 && err == nil {
			continue
		}
		// Held from now until settled: kept alive while it waits its turn.
		f := fetched{msgs: msgs, err: err, id: c.held.add(msgs)}
		if len(msgs) < c.Config.BatchSize {
			// Caught up: the next fetch waits for this batch to be written, and
			// takes all that came meanwhile, rather than one message now and
			// the rest a batch later.
			f.handled = make(chan struct{})
		}
		batches <- f
		if f.handled != nil {
			select {
			case <-f.handled:
			case <-ctx.Done():
			}
		}
	}
}

// process prepares one batch and writes it, once the Gate lets it: in one
// transaction, or, when it is large, in lanes side by side (Config.Lanes), each
// held and retried on its own until it commits. It returns what became of each
// lane's messages once every lane is through.
func (c *Consumer) process(ctx, wctx context.Context, log *slog.Logger, msgs []pipeline.Message) []written {
	if !c.enter(ctx) {
		return []written{{msgs: msgs, err: ctx.Err()}}
	}
	defer c.leave()
	began := c.now()
	c.rollBatch(log)
	ds := make([]pipeline.Delivery, len(msgs))
	for i, m := range msgs {
		ds[i] = m.Delivery
	}
	lanes := c.lanes(c.batch(ds), msgs)
	if len(lanes) == 1 {
		lanes[0].res, lanes[0].err = c.write(ctx, wctx, log, lanes[0].b, c.hold)
	} else {
		held := &heldLanes{report: c.hold}
		var wg sync.WaitGroup
		for i := range lanes {
			w := &lanes[i]
			wg.Go(func() { w.res, w.err = c.write(ctx, wctx, log, w.b, held.lane()) })
		}
		wg.Wait()
	}
	for i := range lanes {
		w := &lanes[i]
		w.res.Took = c.now().Sub(began)
		if w.err == nil {
			c.batchNew = false
			if c.Config.OnCommit != nil {
				c.Config.OnCommit(c.entityName(), c.Source, w.msgs, w.res)
			}
		}
	}
	return lanes
}

// hold reports that the consumer holds a batch (failure), or no longer does
// (nil), to OnHold.
func (c *Consumer) hold(failure error) {
	if c.Config.OnHold != nil {
		c.Config.OnHold(c.entityName(), c.Source, failure)
	}
}

// heldLanes reports a batch written in lanes as held while any of its lanes is.
type heldLanes struct {
	mu     sync.Mutex
	held   int
	report func(error)
}

// lane returns the hold reporter of one lane.
func (h *heldLanes) lane() func(error) {
	holding := false
	return func(failure error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		switch {
		case failure != nil && !holding:
			holding = true
			h.held++
		case failure == nil && holding:
			holding = false
			if h.held--; h.held > 0 {
				return // another lane still holds
			}
		}
		h.report(failure)
	}
}

// lanes splits b (of msgs) by key into as many lanes as give each LaneMin keys,
// at most Lanes. Only entities without parents are split (the children's
// consumers would run further ahead of their parents', and park more), and
// never under a Gate (a backfill takes one transaction of its share at a time).
func (c *Consumer) lanes(b apply.Batch, msgs []pipeline.Message) []written {
	n := min(c.Config.Lanes, len(b.Prepared.Candidates)/max(c.Config.LaneMin, 1))
	if n <= 1 || b.Entity == nil || len(b.Entity.Parents) > 0 || c.Gate != nil {
		return []written{{msgs: msgs, b: b}}
	}
	split := b.Prepared.Split(b.Deliveries, n)
	out := make([]written, len(split))
	for i, l := range split {
		lb := b
		lb.Deliveries, lb.Prepared = l.Deliveries, l.Prepared
		out[i].b = lb
		for _, j := range l.Indexes {
			out[i].msgs = append(out[i].msgs, msgs[j])
		}
	}
	return out
}

// write writes b, holding it for as long as decide says so: every failure of the
// database is retried with backoff (until RetryFor, when set, after which the
// batch is given up), and a batch that keeps timing out is written with its rows
// isolated. Only a shutdown, or RetryFor running out, ends it without a commit.
func (c *Consumer) write(ctx, wctx context.Context, log *slog.Logger, b apply.Batch, report func(error)) (apply.Result, error) {
	bo := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(5*time.Second),
		backoff.WithMaxElapsedTime(c.Config.RetryFor)), ctx)
	var timeouts, failures int
	var heldSince time.Time
	defer func() {
		if failures == 0 {
			return
		}
		report(nil)
	}()
	res, err := backoff.RetryNotifyWithData(func() (apply.Result, error) {
		actx, cancel := context.WithTimeout(wctx, c.Config.BatchTimeout)
		if b.IsolateTimeouts {
			// Isolating is many statements, each under the statement timeout: the
			// batch deadline would cut it short. It still has one, for a
			// connection that stops answering altogether.
			actx, cancel = context.WithTimeout(wctx, 10*c.Config.BatchTimeout)
		}
		defer cancel()
		res, err := c.Writer.ApplyBatch(actx, b)
		if errors.Is(err, apply.ErrTargetChanged) {
			// The writer has checked the rules against the table as it is now:
			// prepare the batch again with them before the next attempt.
			isolate := b.IsolateTimeouts
			b = c.batch(b.Deliveries)
			b.IsolateTimeouts = isolate
		}
		switch {
		case err == nil:
			if failures > 0 {
				log.Info("held batch written", "failed_attempts", failures, "held_for", c.now().Sub(heldSince), "batch_size", len(b.Deliveries))
			}
			return res, nil
		case decide(ctx, err) != hold:
			return res, backoff.Permanent(err) // shutdown: the attempt in flight had its grace
		case errors.Is(err, apply.ErrTimeout):
			if timeouts++; timeouts >= c.Config.EscalateAfter && !b.IsolateTimeouts {
				log.Error("batch keeps timing out; writing it with its rows isolated, rows that time out alone become dead letters",
					"timeouts", timeouts, "batch_size", len(b.Deliveries), "err", err)
				b.IsolateTimeouts = true
				if c.Config.OnEscalate != nil {
					c.Config.OnEscalate(c.entityName(), c.Source)
				}
			}
		}
		return res, err
	}, bo, func(err error, next time.Duration) {
		if failures++; failures == 1 {
			heldSince = c.now()
		}
		log.Warn("batch held: writing it failed; retrying", "reason", apply.Kind(err), "err", err, "retry_in", next, "batch_size", len(b.Deliveries))
		report(err)
	})
	if decide(ctx, err) == hold {
		err = givenUp{err} // RetryFor ran out
	}
	return res, err
}

// batch prepares ds as one batch, with the catalog (and this consumer's entity
// in it) and the mapping rules in force now.
func (c *Consumer) batch(ds []pipeline.Delivery) apply.Batch {
	rules := c.Rules.Load()
	cat, entity := c.Catalog.Load(), c.Entity
	if entity != nil {
		if current, ok := cat.Entity(entity.Name); ok {
			entity = current
		}
	}
	prepared := pipeline.Preparer{Catalog: cat, Rules: rules}.Prepare(ds)
	return apply.Batch{Entity: entity, Catalog: cat, Rules: rules, BatchUID: c.batchUID, NewBatch: c.batchNew, Source: c.Source,
		Replica: c.Config.Replica, Deliveries: ds, Prepared: prepared, DeferRecheck: true}
}

// rollBatch starts a new rolling sync_batches row when the window has passed.
func (c *Consumer) rollBatch(log *slog.Logger) {
	now := c.now()
	if c.batchUID != uuid.Nil && now.Sub(c.batchStart) < c.Config.BatchWindow {
		return
	}
	c.closeBatch(log, nil)
	c.batchUID, c.batchStart, c.batchNew = uuid.Must(uuid.NewV7()), now, true
}

// closeBatch marks the rolling batch completed (failed when failure is set).
func (c *Consumer) closeBatch(log *slog.Logger, failure error) {
	if c.batchUID == uuid.Nil {
		return
	}
	c.rechecks.wait() // they count in it
	if !c.batchNew {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Writer.CloseBatch(ctx, c.batchUID, failure); err != nil {
			log.Warn("closing batch failed; it stays running", "batch_uid", c.batchUID, "err", err)
		}
	}
	c.batchUID = uuid.Nil
}

// now is the consumer's clock.
func (c *Consumer) now() time.Time {
	if c.Now == nil {
		return time.Now()
	}
	return c.Now()
}

func (c *Consumer) entityName() string {
	if c.Entity == nil {
		return apply.UnknownEntity
	}
	return c.Entity.Name
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
