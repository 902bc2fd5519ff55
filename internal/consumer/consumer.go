// Package consumer is the service loop of one durable consumer: fetch a batch, run
// the pipeline, write it in one transaction, and only then ack. Fetching the next
// batch overlaps writing the current one, and at most three batches of messages are
// held at once, however large the backlog.
//
// # Settling messages
//
// One switch decides what happens to the messages of a batch (settle):
//
//   - the transaction committed: ack every message, dead letters included (they are
//     in bridge.failed_records now);
//   - an infrastructure failure (database unreachable, serialization failure,
//     deadlock): the consumer takes no new work and retries the batch in-process
//     with exponential backoff (at most 5s apart), keeping the messages' ack timers
//     alive, until it commits; with RetryFor set, it gives up after that long and
//     naks with a delay instead. Either way nothing is dead-lettered because of an
//     outage, and holding the batch (rather than letting JetStream redeliver it)
//     keeps the delivery count from creeping towards MaxDeliver during a long one;
//   - any other failure of the write (a bug, the schema changed under us): nak with a
//     delay that doubles with every delivery (up to 5 minutes) and close the rolling
//     batch as failed with the reason;
//   - shutdown: nak at once, never a dead letter.
//
// # Shutdown
//
// When ctx ends the loop stops fetching; a batch being written gets ShutdownGrace to
// commit (and is acked), fetched batches not yet written are nakked.
package consumer

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
)

// Fetcher pulls batches (stream.Fetcher).
type Fetcher interface {
	Fetch(ctx context.Context, n int, wait time.Duration) ([]stream.Message, error)
}

// Writer commits prepared batches (store.Store).
type Writer interface {
	ApplyBatch(ctx context.Context, b store.Batch) (store.Result, error)
	CloseBatch(ctx context.Context, uid uuid.UUID, failure error) error
}

// Config tunes one consumer.
type Config struct {
	// BatchSize is the most messages fetched at once (default 500).
	BatchSize int
	// FetchWait is how long an idle fetch waits for the first message (default 1s).
	FetchWait time.Duration
	// BatchWindow is how long one rolling sync_batches row collects counts (default 1m).
	BatchWindow time.Duration
	// RetryFor bounds the in-process retries of one batch after an infrastructure
	// failure before its messages are nakked (default 0: retry until it commits).
	RetryFor time.Duration
	// NakDelay is the first redelivery delay after a failed write; it doubles with
	// every delivery up to 5 minutes (default 5s).
	NakDelay time.Duration
	// ShutdownGrace is how long a batch being written at shutdown may take to
	// commit (default 10s).
	ShutdownGrace time.Duration
	// Replica names this process in sync_batches (default the host name).
	Replica string
	// OnCommit, when set, is called after every committed batch (benchmarks, metrics).
	OnCommit func(entity string, source pipeline.Source, msgs []stream.Message, res store.Result)
}

func (c *Config) defaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.FetchWait <= 0 {
		c.FetchWait = time.Second
	}
	if c.BatchWindow <= 0 {
		c.BatchWindow = time.Minute
	}
	if c.NakDelay <= 0 {
		c.NakDelay = 5 * time.Second
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 10 * time.Second
	}
}

// Rules holds the current mapping rules; a batch takes one snapshot and keeps it.
type Rules struct{ p atomic.Pointer[mapping.Set] }

// Load returns the current rules.
func (r *Rules) Load() *mapping.Set { return r.p.Load() }

// Store replaces the rules for the batches that start after it.
func (r *Rules) Store(s *mapping.Set) { r.p.Store(s) }

// Consumer runs one durable consumer of one entity.
type Consumer struct {
	Entity  *catalog.Entity
	Catalog *catalog.Catalog
	Source  pipeline.Source
	Fetcher Fetcher
	Writer  Writer
	Rules   *Rules
	Config  Config
	Logger  *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Gate, when set, is a semaphore the consumer holds while it writes a batch:
	// the backfill consumers share a small one, so that a night's backfill takes
	// only its share of the database and realtime batches never queue behind it.
	Gate chan struct{}

	batchUID   uuid.UUID
	batchStart time.Time
	batchNew   bool // no transaction counted in batchUID has committed yet
}

type fetched struct {
	msgs []stream.Message
	err  error
}

// Run consumes until ctx ends, then closes its rolling batch and returns nil.
func (c *Consumer) Run(ctx context.Context) error {
	c.Config.defaults()
	if c.Now == nil {
		c.Now = time.Now
	}
	log := c.Logger.With("entity", c.entityName(), "source", string(c.Source))
	defer c.closeBatch(log, nil)

	// Writes outlive ctx by ShutdownGrace, so that a batch being written commits.
	wctx, cancelWrites := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWrites()
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(c.Config.ShutdownGrace, cancelWrites) })
	defer stopGrace()

	batches := make(chan fetched, 1)
	go c.prefetch(ctx, log, batches)
	for f := range batches {
		if f.err != nil || ctx.Err() != nil {
			c.settle(ctx, log, f.msgs, nil, cmpErr(f.err, ctx.Err()))
			continue
		}
		if !c.enter(ctx) {
			c.settle(ctx, log, f.msgs, nil, ctx.Err())
			continue
		}
		res, err := c.process(ctx, wctx, log, f.msgs)
		c.leave()
		c.settle(ctx, log, f.msgs, &res, err)
	}
	return nil
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
// batches when ctx ends.
func (c *Consumer) prefetch(ctx context.Context, log *slog.Logger, batches chan<- fetched) {
	defer close(batches)
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond), backoff.WithMaxInterval(10*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		msgs, err := c.Fetcher.Fetch(ctx, c.Config.BatchSize, c.Config.FetchWait)
		if err != nil && ctx.Err() == nil {
			wait := bo.NextBackOff()
			log.Warn("fetch failed; retrying", "err", err, "retry_in", wait)
			batches <- fetched{msgs: msgs, err: err}
			sleep(ctx, wait)
			continue
		}
		bo.Reset()
		if len(msgs) == 0 && err == nil {
			continue
		}
		batches <- fetched{msgs: msgs, err: err}
	}
}

func (c *Consumer) process(ctx, wctx context.Context, log *slog.Logger, msgs []stream.Message) (store.Result, error) {
	began := c.Now()
	c.rollBatch(log)
	ds := make([]pipeline.Delivery, len(msgs))
	for i, m := range msgs {
		ds[i] = m.Delivery
	}
	rules := c.Rules.Load()
	prepared := pipeline.Preparer{Catalog: c.Catalog, Rules: rules}.Prepare(ds)
	b := store.Batch{Entity: c.Entity, Catalog: c.Catalog, Rules: rules, BatchUID: c.batchUID, NewBatch: c.batchNew, SyncType: syncType(c.Source), Replica: c.Config.Replica, Deliveries: ds, Prepared: prepared}
	bo := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(5*time.Second),
		backoff.WithMaxElapsedTime(c.Config.RetryFor)), ctx)
	res, err := backoff.RetryNotifyWithData(func() (store.Result, error) {
		res, err := c.Writer.ApplyBatch(wctx, b)
		if err != nil && !store.Retryable(err) {
			return res, backoff.Permanent(err)
		}
		return res, err
	}, bo, func(err error, next time.Duration) {
		log.Warn("batch write failed; retrying", "err", err, "retry_in", next, "batch_size", len(msgs))
		for _, m := range msgs {
			_ = m.InProgress()
		}
	})
	res.Took = c.Now().Sub(began)
	if err == nil {
		c.batchNew = false
		if c.Config.OnCommit != nil {
			c.Config.OnCommit(c.entityName(), c.Source, msgs, res)
		}
	} else if !store.Retryable(err) && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
		c.closeBatch(log, err)
	}
	return res, err
}

// settle is the one place that decides what happens to fetched messages.
func (c *Consumer) settle(ctx context.Context, log *slog.Logger, msgs []stream.Message, res *store.Result, err error) {
	switch {
	case err == nil && res != nil:
		for _, m := range msgs {
			if aerr := m.Ack(); aerr != nil {
				log.Warn("ack failed; the message will be redelivered and found unchanged", "err", aerr, "stream_seq", m.Delivery.StreamSeq)
			}
		}
		log.Debug("batch committed", "batch_size", len(msgs), "took", res.Took, "inserted", res.Counts.Inserted, "updated", res.Counts.Updated,
			"unchanged", res.Counts.Unchanged, "stale", res.Counts.Stale, "deleted", res.Counts.Deleted, "parked", res.Counts.Parked,
			"released", res.Counts.Released, "failed", res.Counts.Failed)
	case ctx.Err() != nil || errors.Is(err, context.Canceled):
		for _, m := range msgs {
			_ = m.NakWithDelay(0)
		}
	default:
		if len(msgs) > 0 {
			log.Error("batch not written; redelivery requested", "err", err, "batch_size", len(msgs), "nak_delay", c.Config.NakDelay)
		}
		for _, m := range msgs {
			_ = m.NakWithDelay(nakDelay(c.Config.NakDelay, m.NumDelivered))
		}
	}
}

// nakDelay doubles base with every delivery after the first, up to 5 minutes.
func nakDelay(base time.Duration, delivered uint64) time.Duration {
	const ceiling = 5 * time.Minute
	d := base
	for i := uint64(1); i < delivered && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

// rollBatch starts a new rolling sync_batches row when the window has passed.
func (c *Consumer) rollBatch(log *slog.Logger) {
	now := c.Now()
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
	if !c.batchNew {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Writer.CloseBatch(ctx, c.batchUID, failure); err != nil {
			log.Warn("closing batch failed; it stays running", "batch_uid", c.batchUID, "err", err)
		}
	}
	c.batchUID = uuid.Nil
}

func (c *Consumer) entityName() string {
	if c.Entity == nil {
		return store.UnknownEntity
	}
	return c.Entity.Name
}

func syncType(s pipeline.Source) string {
	if s == pipeline.Backfill {
		return "background"
	}
	return "realtime"
}

func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
