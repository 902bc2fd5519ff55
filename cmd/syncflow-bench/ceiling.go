package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/event"
)

// A ceiling shape: how many pull-and-upsert loops run, over which consumers.
type ceilingShape struct {
	name string
	// perEntity gives each entity a consumer and a loop of its own, the
	// parallelism SyncFlow runs with; otherwise loops loops share one consumer
	// of the whole stream.
	perEntity bool
	loops     int
}

var ceilingShapes = []ceilingShape{
	{name: "one loop per entity", perEntity: true},
	{name: "1 loop", loops: 1},
	{name: "2 loops", loops: 2},
	{name: "4 loops", loops: 4},
}

// fairCeiling measures the ceiling in every shape and returns the best median:
// SyncFlow is compared with the fastest simple loop this machine runs, not with
// one loop while it runs several.
func (b *bench) fairCeiling() (float64, string, error) {
	best, bestShape := 0.0, ""
	for _, shape := range ceilingShapes {
		rate, _, err := b.repeat("ceiling "+shape.name, func() (float64, float64, error) { return b.ceilingRun(shape) })
		if err != nil {
			return 0, "", err
		}
		fmt.Printf("  ceiling  %-20s median %8.0f events/s\n", shape.name, rate)
		if rate > best {
			best, bestShape = rate, shape.name
		}
	}
	return best, bestShape, nil
}

// ceilingRun drains the backlog with the simplest fast loops: pull 1,000, keep
// the newest version per key, one unnest upsert into a bare table with the version
// guard, ack; each loop fetches its next batch while it writes the current one.
func (b *bench) ceilingRun(shape ceilingShape) (float64, float64, error) {
	if err := b.publish(b.events); err != nil {
		return 0, 0, err
	}
	var consumers []jetstream.Consumer
	if shape.perEntity {
		for _, e := range b.cat.Names() {
			c, err := b.js.CreateOrUpdateConsumer(b.ctx, event.Realtime.Stream, jetstream.ConsumerConfig{
				Durable: "bench_ceiling_" + e, AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: event.Realtime.Subject(e),
				MaxAckPending: 10000, AckWait: time.Minute,
			})
			if err != nil {
				return 0, 0, err
			}
			consumers = append(consumers, c)
		}
	} else {
		c, err := b.baselineConsumer("bench_ceiling")
		if err != nil {
			return 0, 0, err
		}
		for range shape.loops {
			consumers = append(consumers, c)
		}
	}
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	var done atomic.Int64
	total := int64(len(b.events))
	errs := make(chan error, len(consumers))
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.ceilingLoop(ctx, c, &done, total); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	for done.Load() < total && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	cancel()
	wg.Wait()
	select {
	case err := <-errs:
		return 0, 0, err
	default:
	}
	return float64(done.Load()) / elapsed.Seconds(), 0, nil
}

// ceilingLoop is one pull-and-upsert loop, with its next fetch overlapping its
// write.
func (b *bench) ceilingLoop(ctx context.Context, c jetstream.Consumer, done *atomic.Int64, total int64) error {
	batches := make(chan []jetstream.Msg, 1)
	var fetchErr error
	go func() {
		defer close(batches)
		for ctx.Err() == nil && done.Load() < total {
			mb, err := c.FetchNoWait(1000)
			if err != nil {
				fetchErr = err
				return
			}
			var msgs []jetstream.Msg
			for m := range mb.Messages() {
				msgs = append(msgs, m)
			}
			if len(msgs) == 0 {
				time.Sleep(time.Millisecond)
				continue
			}
			select {
			case batches <- msgs:
			case <-ctx.Done():
			}
		}
	}()
	for msgs := range batches {
		newest, err := b.bareRows(msgs)
		if err != nil {
			return err
		}
		// In key order: two loops upserting overlapping keys lock them in the
		// same order and cannot deadlock.
		slices.SortFunc(newest, func(x, y bareRow) int { return strings.Compare(x.key, y.key) })
		var keys, payloads []string
		var ords, seqs []int64
		for _, r := range newest {
			keys, ords, seqs, payloads = append(keys, r.key), append(ords, r.ord), append(seqs, int64(r.seq)), append(payloads, string(r.payload))
		}
		if _, err := b.pool.Exec(b.ctx, bareUpsert, keys, ords, seqs, payloads); err != nil {
			return fmt.Errorf("ceiling upsert: %w", err)
		}
		for _, m := range msgs {
			_ = m.Ack()
		}
		done.Add(int64(len(msgs)))
	}
	return fetchErr
}
