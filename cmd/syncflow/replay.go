package main

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
)

func replayCommand() command {
	return command{path: "replay", summary: "re-deliver a time or sequence range of an entity through the pipeline", setup: setupReplay}
}

func setupReplay(f *flags) runFunc {
	var (
		c             common
		n             natsFlags
		defs          definitions
		entity, since string
		which         string
		fromSeq       uint64
		toSeq         uint64
		batch         int
		dryRun        bool
	)
	c.register(f)
	n.register(f)
	defs.register(f)
	f.StringVar(&entity, "entity", "", "the entity to replay (required)")
	f.StringVar(&since, "since", "", "replay messages stored since this time (RFC 3339, a date, or a duration back: 1h, 7d)")
	f.Uint64Var(&fromSeq, "from-seq", 0, "replay from this stream sequence")
	f.Uint64Var(&toSeq, "to-seq", 0, "stop after this stream sequence (default: the end of the stream)")
	f.StringVar(&which, "stream", "realtime", "realtime (APISMITH_CDC) or backfill (APISMITH_BACKFILL)")
	f.IntVar(&batch, "batch-size", 500, "messages written per transaction")
	f.BoolVar(&dryRun, "dry-run", false, "count the messages in the range; apply nothing")
	return func(ctx context.Context, _ []string) error {
		return replay(ctx, c, n, defs, entity, since, which, fromSeq, toSeq, batch, dryRun)
	}
}

func replay(ctx context.Context, c common, n natsFlags, defs definitions, entity, since, which string, fromSeq, toSeq uint64, batch int, dryRun bool) error {
	if batch < 1 || batch > 10000 {
		return fmt.Errorf("%w: --batch-size is 1 to 10000", errUsage)
	}
	if toSeq > 0 && toSeq < fromSeq {
		return fmt.Errorf("%w: --to-seq %d is before --from-seq %d", errUsage, toSeq, fromSeq)
	}
	if entity == "" || (since == "") == (fromSeq == 0) {
		return fmt.Errorf("%w: say --entity E and one of --since TIME or --from-seq N", errUsage)
	}
	start, err := parseSince(since, time.Now())
	if err != nil {
		return err
	}
	source := event.Realtime
	switch which {
	case "realtime":
	case "backfill":
		source = event.Backfill
	default:
		return fmt.Errorf("%w: --stream is realtime or backfill, not %q", errUsage, which)
	}
	log, err := c.logger(os.Stderr)
	if err != nil {
		return err
	}
	wb, err := openWorkbench(ctx, c, defs)
	if err != nil {
		return err
	}
	defer wb.Close()
	e, ok := wb.cat.Entity(entity)
	if !ok {
		return fmt.Errorf("%w: %s", errNotFound, wb.cat.Unknown(entity))
	}
	n.cfg.Name, n.cfg.Logger = "syncflow-replay", log
	nc, err := stream.Connect(n.cfg)
	if err != nil {
		return fmt.Errorf("%w (is NATS running?)", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// A consumer of its own, removed afterwards (and by the server if we die).
	name := fmt.Sprintf("syncflow_replay_%s_%d", entity, time.Now().UnixNano())
	cfg := jetstream.ConsumerConfig{Name: name, FilterSubject: source.Subject(entity), AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: time.Minute, MaxAckPending: 10 * batch, InactiveThreshold: time.Hour, Description: "syncflow replay"}
	if fromSeq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, fromSeq
	} else {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	if _, err := js.CreateConsumer(ctx, source.Stream, cfg); err != nil {
		return fmt.Errorf("replay consumer on %s: %w", source.Stream, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, source.Stream, name)
	}()
	if dryRun {
		count, err := replayCount(ctx, js, source.Stream, name, cfg, toSeq)
		if err != nil {
			return err
		}
		from := "stored since " + start.UTC().Format(time.RFC3339)
		if fromSeq > 0 {
			from = fmt.Sprintf("from sequence %d", fromSeq)
		}
		if toSeq > 0 {
			from += fmt.Sprintf(" to sequence %d", toSeq)
		}
		fmt.Printf("would replay %d %s events from %s (%s)%s: each is applied again only where its mapped row differs from what the ledger says was applied (a row edited or deleted in the target by hand is not written again)\n(dry run: nothing was changed)\n",
			count, entity, source.Stream, from, pastTheEnd(ctx, js, source.Stream, fromSeq, int(count)))
		return nil
	}
	fetcher, err := stream.NewFetcher(ctx, js, source, name)
	if err != nil {
		return err
	}
	// The one consumer loop over the range: a batch the database cannot take is
	// held and retried as in the service, and one sync_batches row counts it all.
	var total pipeline.Counts
	rules := &consumer.Rules{}
	rules.Store(wb.rules)
	rc := &consumer.Consumer{Entity: e, Catalog: catalog.NewLive(wb.cat), Source: source, Fetcher: &consumer.Bounded{Fetcher: fetcher, Last: toSeq},
		Writer: replayWriter{Applier: wb.applier, st: wb.st}, Rules: rules, Logger: log,
		Config: consumer.Config{Replica: "replay", BatchSize: batch, FetchWait: 500 * time.Millisecond, BatchWindow: math.MaxInt64,
			AckWait: fetcher.AckWait(), OnCommit: func(_ string, _ event.Source, _ []pipeline.Message, res apply.Result) { total.Merge(res.Counts) }}}
	runErr := rc.Run(ctx)
	// What committed is checkpointed, also when the replay was stopped.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := wb.st.FlushCheckpoints(fctx); err != nil {
		return err
	}
	if err := cmp.Or(runErr, ctx.Err()); err != nil {
		return fmt.Errorf("after %d replayed: %w", total.Fetched, err)
	}
	fmt.Printf("replayed %d %s events from %s%s: %d inserted, %d updated, %d unchanged, %d stale, %d deleted, %d parked, %d failed\n",
		total.Fetched, entity, source.Stream, pastTheEnd(ctx, js, source.Stream, fromSeq, int(total.Fetched)),
		total.Inserted, total.Updated, total.Unchanged, total.Stale, total.Deleted, total.Parked, total.Failed)
	return nil
}

// pastTheEnd says where the stream ends when a replay from a sequence found
// nothing: a --from-seq past the last one (a typo, or another stream's
// numbers) is told apart from a range of no events of the entity.
func pastTheEnd(ctx context.Context, js jetstream.JetStream, name string, fromSeq uint64, found int) string {
	if fromSeq == 0 || found > 0 {
		return ""
	}
	s, err := js.Stream(ctx, name)
	if err != nil {
		return ""
	}
	info, err := s.Info(ctx)
	if err != nil || fromSeq <= info.State.LastSeq {
		return ""
	}
	return fmt.Sprintf(" (--from-seq %d is past the stream's last sequence, %d)", fromSeq, info.State.LastSeq)
}

// replayWriter writes the replay's batches and closes its sync_batches row.
type replayWriter struct {
	*apply.Applier
	st *store.Store
}

// CloseBatch marks the replay's sync_batches row completed.
func (w replayWriter) CloseBatch(ctx context.Context, uid uuid.UUID, failure error) error {
	return w.st.CloseBatch(ctx, uid, failure)
}

// replayCount counts the messages a replay consumer would deliver, up to toSeq:
// its pending count, less that of a consumer starting after toSeq.
func replayCount(ctx context.Context, js jetstream.JetStream, stream, name string, cfg jetstream.ConsumerConfig, toSeq uint64) (uint64, error) {
	cons, err := js.Consumer(ctx, stream, name)
	if err != nil {
		return 0, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	count := info.NumPending
	if toSeq == 0 {
		return count, nil
	}
	after := cfg
	after.Name = name + "_end"
	after.DeliverPolicy, after.OptStartSeq, after.OptStartTime = jetstream.DeliverByStartSequencePolicy, toSeq+1, nil
	end, err := js.CreateConsumer(ctx, stream, after)
	if err != nil {
		return 0, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, stream, after.Name)
	}()
	endInfo, err := end.Info(ctx)
	if err != nil {
		return 0, err
	}
	if endInfo.NumPending > count {
		return 0, nil
	}
	return count - endInfo.NumPending, nil
}
