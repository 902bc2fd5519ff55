package service

import (
	"cmp"
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/stream"
)

// entityConsumers runs one consumer per catalog entity and stream, and follows
// the catalog in force: a new version starts the consumers of the entities it
// adds and stops those of the entities it removes (a stopped consumer lets the
// batch it is writing commit and gives back what it holds). An entity whose
// durable consumer does not exist yet (`syncflow streams apply` has not run
// since the catalog gained it) is tried again every retry interval.
type entityConsumers struct {
	catalog *catalog.Live
	sources []event.Source
	// bind makes the fetcher of an entity's durable consumer on a stream.
	bind func(ctx context.Context, source event.Source, entity string) (*stream.Fetcher, error)
	// build makes the consumer that runs on a fetcher.
	build func(e *catalog.Entity, source event.Source, f *stream.Fetcher) *consumer.Consumer
	log   *slog.Logger
	retry time.Duration

	changed chan struct{} // a new catalog is in force
	failed  chan error    // a consumer failed: the service stops

	mu      sync.Mutex
	running map[consumerKey]*runningConsumer
	missing map[consumerKey]time.Time // no durable consumer yet: when last warned
	wg      sync.WaitGroup
}

type consumerKey struct{ entity, stream string }

type runningConsumer struct {
	fetcher *stream.Fetcher
	ackWait time.Duration // what the consumer's heartbeat was set from
	stop    context.CancelFunc
	done    chan struct{}
}

func newEntityConsumers(live *catalog.Live, sources []event.Source, log *slog.Logger) *entityConsumers {
	return &entityConsumers{catalog: live, sources: sources, log: log, retry: 10 * time.Second,
		changed: make(chan struct{}, 1), failed: make(chan error, 1),
		running: map[consumerKey]*runningConsumer{}, missing: map[consumerKey]time.Time{}}
}

// bindAll binds a fetcher for every entity of the catalog in force; at start a
// durable consumer that is missing is an error (run `syncflow streams apply`).
func (ec *entityConsumers) bindAll(ctx context.Context) (map[consumerKey]*stream.Fetcher, error) {
	out := map[consumerKey]*stream.Fetcher{}
	for _, source := range ec.sources {
		for _, name := range ec.catalog.Load().Names() {
			f, err := ec.bind(ctx, source, name)
			if err != nil {
				return nil, err
			}
			out[consumerKey{name, source.Stream}] = f
		}
	}
	return out, nil
}

// notify says a new catalog is in force.
func (ec *entityConsumers) notify() {
	select {
	case ec.changed <- struct{}{}:
	default:
	}
}

// Run runs the consumers bound at start, then follows the catalog until ctx ends
// or a consumer fails; it returns once every consumer has returned.
func (ec *entityConsumers) Run(ctx context.Context, bound map[consumerKey]*stream.Fetcher) error {
	defer ec.stopAll()
	ec.reconcile(ctx, bound)
	tick := time.NewTicker(ec.retry)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-ec.failed:
			return err
		case <-ec.changed:
		case <-tick.C:
		}
		ec.reconcile(ctx, nil)
	}
}

// reconcile starts the consumers the catalog in force has and stops the others.
func (ec *entityConsumers) reconcile(ctx context.Context, bound map[consumerKey]*stream.Fetcher) {
	cat := ec.catalog.Load()
	want := map[consumerKey]*catalog.Entity{}
	for _, source := range ec.sources {
		for _, e := range cat.Entities() {
			want[consumerKey{e.Name, source.Stream}] = e
		}
	}
	var changed []consumerKey
	if bound == nil {
		// A consumer whose ack wait changed (streams apply with new settings)
		// starts again, so that it keeps what it holds alive often enough.
		ec.mu.Lock()
		running := maps.Clone(ec.running)
		ec.mu.Unlock()
		for k, r := range running {
			if err := r.fetcher.Refresh(ctx); err == nil && r.fetcher.AckWait() != r.ackWait {
				ec.log.Info("the consumer's ack wait changed: starting it again", "entity", k.entity, "stream", k.stream,
					"was", r.ackWait, "now", r.fetcher.AckWait())
				changed = append(changed, k)
			}
		}
	}
	ec.mu.Lock()
	var stopping []*runningConsumer
	for _, k := range changed {
		if r := ec.running[k]; r != nil {
			r.stop()
			stopping = append(stopping, r)
			delete(ec.running, k)
		}
	}
	for k := range ec.missing {
		if want[k] == nil {
			delete(ec.missing, k)
		}
	}
	for k, r := range ec.running {
		if want[k] == nil {
			ec.log.Info("entity left the catalog: stopping its consumer", "entity", k.entity, "stream", k.stream)
			r.stop()
			stopping = append(stopping, r)
			delete(ec.running, k)
		}
	}
	ec.mu.Unlock()
	for _, r := range stopping {
		<-r.done
	}
	for _, k := range slices.SortedFunc(maps.Keys(want), cmpKeys) {
		ec.mu.Lock()
		_, ok := ec.running[k]
		ec.mu.Unlock()
		if ok || ctx.Err() != nil {
			continue
		}
		source, _ := event.SourceOfStream(k.stream)
		f := bound[k]
		if f == nil {
			var err error
			if f, err = ec.bind(ctx, source, k.entity); err != nil {
				ec.mu.Lock()
				warned, seen := ec.missing[k]
				if !seen || time.Since(warned) >= missingWarnEvery {
					ec.log.Warn("the catalog has an entity without its durable consumer: its events are read by nobody; run `syncflow streams apply`", "entity", k.entity, "stream", k.stream, "err", err)
					ec.missing[k] = time.Now()
				}
				ec.mu.Unlock()
				continue
			}
			ec.mu.Lock()
			delete(ec.missing, k)
			ec.mu.Unlock()
			ec.log.Info("entity joined the catalog: starting its consumer", "entity", k.entity, "stream", k.stream)
		}
		ec.start(ctx, k, want[k], source, f)
	}
}

func cmpKeys(a, b consumerKey) int {
	return cmp.Or(cmp.Compare(a.stream, b.stream), cmp.Compare(a.entity, b.entity))
}

func (ec *entityConsumers) start(ctx context.Context, k consumerKey, e *catalog.Entity, source event.Source, f *stream.Fetcher) {
	cctx, stop := context.WithCancel(ctx)
	r := &runningConsumer{fetcher: f, ackWait: f.AckWait(), stop: stop, done: make(chan struct{})}
	c := ec.build(e, source, f)
	ec.mu.Lock()
	ec.running[k] = r
	ec.mu.Unlock()
	ec.wg.Add(1)
	go func() {
		defer ec.wg.Done()
		defer close(r.done)
		if err := c.Run(cctx); err != nil && cctx.Err() == nil {
			select {
			case ec.failed <- err:
			default:
			}
		}
	}()
}

func (ec *entityConsumers) stopAll() {
	ec.mu.Lock()
	for _, r := range ec.running {
		r.stop()
	}
	ec.running = map[consumerKey]*runningConsumer{}
	ec.mu.Unlock()
	ec.wg.Wait()
}

// missingWarnEvery is how often an entity without its durable consumer is said
// again in the log (it is a /readyz reason and a gauge all along).
const missingWarnEvery = 5 * time.Minute

// missingConsumers lists the entities of the catalog in force whose durable
// consumer does not exist, as "entity on STREAM".
func (ec *entityConsumers) missingConsumers() []string {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	out := make([]string, 0, len(ec.missing))
	for k := range ec.missing {
		out = append(out, k.entity+" on "+k.stream)
	}
	slices.Sort(out)
	return out
}

// fetchers lists the running consumers' fetchers, for the gauges.
func (ec *entityConsumers) fetchers() []boundFetcher {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	out := make([]boundFetcher, 0, len(ec.running))
	for k, r := range ec.running {
		out = append(out, boundFetcher{stream: k.stream, entity: k.entity, f: r.fetcher})
	}
	return out
}
