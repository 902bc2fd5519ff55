// Package service wires SyncFlow's consumer service together: the store, the NATS
// connection, one consumer per entity and stream, the stray-subject drain, the
// mapping watcher and the checkpointer. `syncflow run` and the benchmark both start
// it through Run.
package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/redact"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/telemetry"
)

// Config configures the service. Zero durations take the defaults named.
type Config struct {
	// DatabaseURL is the PostgreSQL URL.
	DatabaseURL string
	// MaxConns caps the database pool (default 8).
	MaxConns int32
	// StatementTimeout, LockTimeout and IdleInTransactionTimeout bound every
	// statement, lock wait and open transaction on SyncFlow's connections (see
	// store.Config; zero leaves the server's setting).
	StatementTimeout, LockTimeout, IdleInTransactionTimeout time.Duration
	// NATS says how to reach NATS.
	NATS stream.Config
	// EmbeddedNATSDir, when set and no NATS answers at NATS.URL, starts an embedded
	// JetStream server on that address storing here.
	EmbeddedNATSDir string
	// Catalog and Streams are the validated entity catalog and stream definitions.
	Catalog *catalog.Catalog
	Streams stream.Definitions
	// Consumer tunes every consumer.
	Consumer consumer.Config
	// Migrate applies pending migrations first; ApplyStreams creates the streams and
	// consumers; Backfill also consumes the backfill stream.
	Migrate, ApplyStreams, Backfill bool
	// MappingResync reloads the field mappings at least this often (default 30s).
	MappingResync time.Duration
	// StrayInterval is how often stray subjects are looked for (default 10s).
	StrayInterval time.Duration
	// CheckpointInterval is how often checkpoints are written (default 500ms).
	CheckpointInterval time.Duration
	// Park says how long parked children wait; Retry how dead letters are retried
	// (zero fields take deadletter.DefaultPark's and DefaultRetry's).
	Park, Retry deadletter.Backoff
	// DeadLetterInterval is how often parked children are swept and due dead
	// letters retried (default 5s).
	DeadLetterInterval time.Duration
	// BackfillShare is how many backfill batches may be written at once, across
	// all entities (default 1); realtime batches are not limited.
	BackfillShare int
	// HTTPAddr is where /metrics, /healthz and /readyz are served ("" for nowhere);
	// OnListen, when set, learns the address it listens on.
	HTTPAddr string
	OnListen func(net.Addr)
	// StatsInterval is how often the gauges are read from the database and
	// JetStream (default 15s).
	StatsInterval time.Duration
	// LeaseWait is how long a start waits for the lease on the replica name while
	// another process holds it, in case that one is going away (default 5s).
	LeaseWait time.Duration
	Logger    *slog.Logger
}

// Run starts the service and blocks until ctx ends and everything has stopped.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if cfg.NATS.Logger == nil {
		cfg.NATS.Logger = log
	}
	// The HTTP address first: a second process on the same address stops here,
	// before it has any effect.
	var ln net.Listener
	if cfg.HTTPAddr != "" {
		var err error
		if ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return fmt.Errorf("metrics and health on %s: %w (is another syncflow running on this host? give this one another --http-addr)", cfg.HTTPAddr, err)
		}
		defer ln.Close()
	}
	// Then the lease on the replica name, before anything is touched: a second
	// process under a live name refuses to start.
	lease, err := store.AcquireLease(ctx, cfg.DatabaseURL, cfg.Consumer.Replica, leaseTag(cfg.Consumer.Replica), or(cfg.LeaseWait, 5*time.Second))
	if err != nil {
		return err
	}
	defer lease.Release()
	// A process that held the name until its connection dropped stops writing
	// within a check of the lease: let it, before this one touches the name's rows.
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(store.LeaseSettle):
	}
	if cfg.Migrate {
		m, err := store.NewMigrator(cfg.DatabaseURL)
		if err != nil {
			return err
		}
		err = m.Up()
		m.Close()
		if err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
	}
	st, err := store.Open(ctx, store.Config{URL: cfg.DatabaseURL, MaxConns: cfg.MaxConns, StatementTimeout: cfg.StatementTimeout,
		LockTimeout: cfg.LockTimeout, IdleInTransactionTimeout: cfg.IdleInTransactionTimeout})
	if err != nil {
		return err
	}
	defer st.Close()
	dlCfg := deadletter.Config{Park: cfg.Park, Retry: cfg.Retry, Interval: cfg.DeadLetterInterval, Logger: log}
	applier, err := apply.NewApplier(st, dlCfg.Stamp(apply.Config{IsolationTimeout: cfg.StatementTimeout, Logger: log}))
	if err != nil {
		return err
	}
	dls, err := deadletter.New(store.DeadLetters{Store: st}, applier, dlCfg)
	if err != nil {
		return err
	}
	w := writer{Applier: applier, Store: st, lease: lease}
	if err := CheckSchema(ctx, st); err != nil {
		return err
	}
	if err := st.PrepareTargets(ctx, cfg.Catalog); err != nil {
		return err
	}
	if n, err := st.AbandonBatches(ctx, cfg.Consumer.Replica); err != nil {
		return err
	} else if n > 0 {
		log.Warn("closed batches a previous run of this replica left running", "replica", cfg.Consumer.Replica, "batches", n)
	}
	rules := &consumer.Rules{}
	initial, err := st.LoadMappings(ctx)
	if err != nil {
		return err
	}
	set, err := mapping.Compile(initial)
	if err != nil {
		return fmt.Errorf("bridge.field_mappings holds invalid rules, fix them: %w", err)
	}
	if err := st.CheckRules(ctx, cfg.Catalog, initial); err != nil {
		return fmt.Errorf("bridge.field_mappings does not fit the target tables; fix the rules (syncflow mappings export, edit, import) or the tables:\n%w", err)
	}
	rules.Store(set)

	nc, embedded, err := connectNATS(cfg.NATS, cfg.EmbeddedNATSDir, log)
	if err != nil {
		return err
	}
	if embedded != nil {
		defer embedded.Stop()
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if cfg.ApplyStreams {
		if err := stream.Apply(ctx, js, cfg.Streams); err != nil {
			return err
		}
	}

	var advisories *stream.AdvisoryReader
	if cfg.Streams.Advisories.Name != "" {
		if advisories, err = stream.NewAdvisoryReader(ctx, js, cfg.Streams); err != nil {
			return err
		}
	}
	metrics := telemetry.NewMetrics()
	metrics.RegisterPool(func() telemetry.Pool { p := st.PoolStats(); return telemetry.Pool(p) })
	obs := &observer{m: metrics, st: st, nc: nc, entities: cfg.Catalog.Names(), log: log}
	userHook := cfg.Consumer.OnCommit
	cfg.Consumer.OnCommit = func(entity string, source event.Source, msgs []consumer.Message, res apply.Result) {
		obs.record(entity, source, msgs, res)
		if userHook != nil {
			userHook(entity, source, msgs, res)
		}
	}
	cfg.Consumer.OnHold = obs.hold
	cfg.Consumer.OnEscalate = func(entity string, source event.Source) {
		metrics.Escalations.WithLabelValues(entity, source.Name).Inc()
	}
	// Two groups, stopped in order: g holds the workers that commit (consumers,
	// strays, the dead-letter worker, the advisory drain, the mappings watcher);
	// infra what must outlive them (the checkpointer, whose last flush must come
	// after the last commit, the HTTP server and the gauges). A failure in either
	// stops both.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)
	infraCtx, stopInfra := context.WithCancel(context.WithoutCancel(ctx))
	defer stopInfra()
	infra, ictx := errgroup.WithContext(infraCtx)
	goInfra := func(fn func() error) {
		infra.Go(func() error {
			err := fn()
			if err != nil {
				stop()
			}
			return err
		})
	}
	wait := func() error {
		err := g.Wait()
		stopInfra()
		return errors.Join(err, infra.Wait())
	}
	// A failure while the rest is being started stops what already runs first.
	abort := func(err error) error {
		stop()
		_ = wait()
		return err
	}
	// The lease is held until the last commit and the last checkpoint are done.
	goInfra(func() error { return lease.Keep(ictx, store.LeaseCheck, log) })
	if ln != nil {
		goInfra(func() error { return obs.serve(ictx, ln) })
		if cfg.OnListen != nil {
			cfg.OnListen(ln.Addr())
		}
		log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String())
	}
	backfillGate := make(chan struct{}, max(cfg.BackfillShare, 1))
	sources := []event.Source{event.Realtime}
	if cfg.Backfill {
		sources = append(sources, event.Backfill)
	}
	for _, source := range sources {
		finder := &stream.StrayFinder{JS: js, Source: source, Known: func(subject string) bool {
			entity, ok := strings.CutPrefix(subject, source.SubjectPrefix)
			_, known := cfg.Catalog.Entity(entity)
			return ok && known
		}}
		strays := &consumer.Strays{Find: finder.Find, Catalog: cfg.Catalog, Source: source, Writer: w,
			Config: consumer.StrayConfig{Interval: cfg.StrayInterval, Replica: cfg.Consumer.Replica}, Logger: log}
		g.Go(func() error { return strays.Run(gctx) })
		for _, e := range cfg.Catalog.Entities() {
			durable := cfg.Streams.Consumers[source.Stream][e.Name].Durable
			fetcher, err := stream.NewFetcher(ctx, js, source, durable)
			if err != nil {
				return abort(err)
			}
			obs.fetchers = append(obs.fetchers, boundFetcher{stream: source.Stream, entity: e.Name, f: fetcher})
			c := &consumer.Consumer{Entity: e, Catalog: cfg.Catalog, Source: source, Fetcher: fetcher, Writer: w,
				Rules: rules, Config: cfg.Consumer, Logger: log}
			// Held messages are kept alive well within the consumer's ack wait,
			// whatever the heartbeat setting.
			if wait := fetcher.AckWait(); wait > 0 {
				c.Config.Heartbeat = min(cmp.Or(c.Config.Heartbeat, 10*time.Second), wait/3)
			}
			if source == event.Backfill {
				c.Gate = backfillGate
			}
			g.Go(func() error { return c.Run(gctx) })
		}
	}
	g.Go(func() error {
		return st.WatchMappings(gctx, or(cfg.MappingResync, 30*time.Second), log, func(rs []mapping.Rule) {
			set, err := mapping.Compile(rs)
			if err != nil {
				log.Error("bridge.field_mappings holds invalid rules; keeping the previous ones", "err", err)
				return
			}
			// A rule for a column the table does not have (any more) would drop
			// its values without a trace: say so, and keep what was working.
			if err := st.CheckRules(gctx, cfg.Catalog, rs); err != nil {
				log.Error("field mappings do not fit the target tables; keeping the previous ones", "err", err)
				return
			}
			rules.Store(set)
			log.Debug("field mappings loaded", "rules", len(rs))
		})
	})
	goInfra(func() error { return st.RunCheckpoints(ictx, or(cfg.CheckpointInterval, 500*time.Millisecond), log) })
	obs.bound.Store(true)
	goInfra(func() error { return obs.runRefresh(ictx, or(cfg.StatsInterval, 15*time.Second)) })
	worker := &deadletter.Worker{DeadLetters: dls, Catalog: cfg.Catalog, Rules: rules.Load, Replica: cfg.Consumer.Replica}
	g.Go(func() error { return worker.Run(gctx) })
	if advisories != nil {
		drain := &deadletter.GaveUpDrain{Reader: advisories, Applier: applier, Catalog: cfg.Catalog, Logger: log}
		g.Go(func() error { return drain.Run(gctx) })
	}
	log.Info("syncflow running", "replica", cfg.Consumer.Replica, "entities", len(cfg.Catalog.Names()),
		"database", redact.String(cfg.DatabaseURL), "nats", redact.String(nc.ConnectedUrlRedacted()))
	// The consumers stop fetching, commit or nak what they hold, and return; then
	// the checkpointer flushes what they committed last; then NATS and the pool
	// are closed (deferred above).
	err = wait()
	// Consumers have acked or nakked what they held: let that reach the server.
	if ferr := nc.FlushTimeout(5 * time.Second); ferr != nil && err == nil {
		log.Warn("flushing NATS on shutdown failed", "err", ferr)
	}
	log.Info("syncflow stopped")
	return err
}

// leaseTag describes this process to another that finds its replica name taken.
func leaseTag(replica string) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("syncflow pid=%d host=%s replica=%s", os.Getpid(), host, replica)
}

// writer is what the consumers write with: batches applied, rolling batch rows
// closed. While the lease on the replica name is not held (its connection
// dropped), it writes nothing: the batch is held, as in an outage, and another
// process may be taking the name.
type writer struct {
	*apply.Applier
	*store.Store
	lease *store.Lease
}

// ApplyBatch applies b while the lease is held.
func (w writer) ApplyBatch(ctx context.Context, b apply.Batch) (apply.Result, error) {
	if !w.lease.Held() {
		return apply.Result{}, fmt.Errorf("%w: the lease on the replica name is being taken again", apply.ErrUnavailable)
	}
	return w.Applier.ApplyBatch(ctx, b)
}

func or(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// CheckSchema refuses a schema that is not the one this binary was built with.
func CheckSchema(ctx context.Context, st *store.Store) error {
	have, dirty, err := st.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	return schemaProblem(have, dirty)
}

// schemaProblem says what is wrong with schema version have, if anything.
func schemaProblem(have uint, dirty bool) error {
	want, err := store.Latest()
	if err != nil {
		return err
	}
	switch {
	case dirty:
		return fmt.Errorf("the bridge schema is dirty at version %d: fix the failed migration, then `syncflow migrate force %d` and `syncflow migrate up`", have, int(have)-1)
	case have < want:
		return fmt.Errorf("the bridge schema is at version %d, this syncflow needs %d: run `syncflow migrate up` (or `syncflow run --migrate`)", have, want)
	case have > want:
		return fmt.Errorf("the bridge schema is at version %d, newer than this syncflow knows (%d): upgrade syncflow", have, want)
	}
	return nil
}

// connectNATS connects; when nothing answers and embeddedDir is set, it starts an
// embedded JetStream server on the URL's address first.
func connectNATS(cfg stream.Config, embeddedDir string, log *slog.Logger) (*nats.Conn, *stream.Embedded, error) {
	nc, err := stream.Connect(cfg)
	if err == nil || embeddedDir == "" {
		if err != nil {
			err = fmt.Errorf("%w (is NATS running? `make run` starts an embedded one with --embedded-nats-dir)", err)
		}
		return nc, nil, err
	}
	u, perr := url.Parse(strings.Split(cfg.URL, ",")[0])
	if perr != nil {
		return nil, nil, fmt.Errorf("nats URL %s: %v", redact.String(cfg.URL), redact.String(perr.Error()))
	}
	hostname, portText, _ := net.SplitHostPort(u.Host)
	port, _ := strconv.Atoi(portText)
	if port == 0 {
		port = 4222
	}
	if err := os.MkdirAll(embeddedDir, 0o755); err != nil {
		return nil, nil, err
	}
	srv, err := stream.StartEmbedded(hostname, port, embeddedDir)
	if err != nil {
		return nil, nil, err
	}
	log.Info("no NATS answered; started an embedded JetStream server", "url", srv.ClientURL(), "store_dir", embeddedDir)
	nc, err = stream.Connect(cfg)
	if err != nil {
		srv.Stop()
		return nil, nil, err
	}
	return nc, srv, nil
}
