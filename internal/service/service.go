// Package service is SyncFlow's consumer service. New builds it: the HTTP
// listener, the lease on the replica name, the store, the NATS connection, and
// what runs on them (one consumer per entity and stream, the stray-subject
// drains, the dead-letter worker, the advisory drain, the mapping watcher, the
// checkpointer, the gauges). Run runs it until its context ends, then shuts it
// down in order. `syncflow run` and the benchmark start it through Run.
//
// # Shutdown
//
// What commits stops first: the consumers stop fetching, commit or nak what they
// hold and return, as do the stray drains, the dead-letter worker, the advisory
// drain and the mapping watcher. Then what must outlive them stops: the
// checkpointer, whose last flush writes the checkpoints of the last commits, the
// lease, the HTTP server and the gauges. Then the acks and naks are flushed to
// NATS, and NATS, the pool, the lease and the listener are closed.
package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/redact"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/telemetry"
)

// Config configures the service. Zero fields take the defaults named (filled by
// withDefaults here, or by the component they tune); Validate refuses negative
// ones and a missing catalog.
type Config struct {
	// DatabaseURL is the PostgreSQL URL.
	DatabaseURL string
	// MaxConns caps the database pool (default 8, see store.Config).
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
	// Catalog and Streams are the validated entity catalog and stream
	// definitions. When Catalog is nil, the service reads the catalog stored in
	// the database once it is migrated, and follows every new version stored
	// (see watchCatalog); a Catalog given here is used as it is. When Streams
	// has no streams, they are read from StreamsFS with the catalog's consumers.
	Catalog   *catalog.Catalog
	Streams   stream.Definitions
	StreamsFS fs.FS
	// BuiltInCatalog is stored, with Migrate, in a database that has no catalog.
	BuiltInCatalog []byte
	// Consumer tunes every consumer.
	Consumer consumer.Config
	// Migrate applies pending migrations first; ApplyStreams creates the streams and
	// consumers; Backfill also consumes the backfill stream.
	Migrate, ApplyStreams, Backfill bool
	// MappingResync reloads the field mappings at least this often (default 30s).
	MappingResync time.Duration
	// StrayInterval is how often stray subjects are looked for (default 10s, see
	// consumer.StrayConfig), and the entities' durable consumers looked at (one
	// missing, or its ack wait changed).
	StrayInterval time.Duration
	// CheckpointInterval is how often checkpoints are written (default 500ms).
	CheckpointInterval time.Duration
	// Park says how long parked children wait; Retry how dead letters are retried
	// (zero fields take deadletter.DefaultPark's and DefaultRetry's).
	Park, Retry deadletter.Backoff
	// DeadLetterInterval is how often parked children are swept and due dead
	// letters retried (default 5s, see deadletter.Config).
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
	// Logger receives the service's logs (default: discard).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.MappingResync = cmp.Or(c.MappingResync, 30*time.Second)
	c.CheckpointInterval = cmp.Or(c.CheckpointInterval, 500*time.Millisecond)
	c.BackfillShare = cmp.Or(c.BackfillShare, 1)
	c.StatsInterval = cmp.Or(c.StatsInterval, 15*time.Second)
	c.LeaseWait = cmp.Or(c.LeaseWait, 5*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.NATS.Logger == nil {
		c.NATS.Logger = c.Logger
	}
	return c
}

// Validate reports every setting that is missing or out of range, the consumers'
// and the dead-letter worker's included.
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.Streams.Streams == nil && c.StreamsFS == nil:
		errs = append(errs, errors.New("service: stream definitions, or the files to read them from, are required"))
	case c.Catalog != nil && c.Streams.Streams != nil:
		errs = append(errs, c.missingConsumers())
	}
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("service: the most database connections must not be negative (%d)", c.MaxConns))
	}
	if c.BackfillShare < 0 {
		errs = append(errs, fmt.Errorf("service: the backfill share must not be negative (%d)", c.BackfillShare))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"statement timeout", c.StatementTimeout}, {"lock timeout", c.LockTimeout}, {"idle-in-transaction timeout", c.IdleInTransactionTimeout},
		{"mapping resync", c.MappingResync}, {"checkpoint interval", c.CheckpointInterval}, {"stats interval", c.StatsInterval}, {"lease wait", c.LeaseWait},
	} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("service: the %s must not be negative (%v)", d.name, d.d))
		}
	}
	errs = append(errs, c.Consumer.Validate(), c.strays().Validate(), c.deadLetters().Validate())
	return errors.Join(errs...)
}

// loadCatalog reads the catalog (when the config does not hold one) and builds
// the stream definitions from it (when the config holds none), and checks that
// every entity has its consumers.
func (s *Service) loadCatalog(ctx context.Context) error {
	c := &s.cfg
	if c.Catalog == nil {
		cat, version, err := storedCatalog(ctx, s.st)
		if err != nil {
			return err
		}
		c.Catalog = cat
		s.catalogVersion.Store(int64(version))
	}
	var err error
	if c.Streams.Streams == nil {
		if c.Streams, err = stream.LoadDefinitions(c.StreamsFS, c.Catalog); err != nil {
			return err
		}
	}
	return c.missingConsumers()
}

// missingConsumers reports each catalog entity without its consumer definitions.
func (c Config) missingConsumers() error {
	var errs []error
	for _, source := range c.sources() {
		for _, name := range c.Catalog.Names() {
			if c.Streams.Consumers[source.Stream][name].Durable == "" {
				errs = append(errs, fmt.Errorf("service: the stream definitions have no consumer of %s for entity %q", source.Stream, name))
			}
		}
	}
	return errors.Join(errs...)
}

// fetchersOf adapts a stray finder to what the consumer package asks of one.
func fetchersOf(find func(context.Context) ([]*stream.StrayFetcher, error)) func(context.Context) ([]consumer.Fetcher, error) {
	return func(ctx context.Context) ([]consumer.Fetcher, error) {
		found, err := find(ctx)
		out := make([]consumer.Fetcher, len(found))
		for i, f := range found {
			out[i] = f
		}
		return out, err
	}
}

// sources are the streams consumed.
func (c Config) sources() []event.Source {
	if c.Backfill {
		return []event.Source{event.Realtime, event.Backfill}
	}
	return []event.Source{event.Realtime}
}

func (c Config) strays() consumer.StrayConfig {
	return consumer.StrayConfig{Interval: c.StrayInterval, Replica: c.Consumer.Replica}
}

func (c Config) deadLetters() deadletter.Config {
	return deadletter.Config{Park: c.Park, Retry: c.Retry, Interval: c.DeadLetterInterval, Logger: c.Logger}
}

// Service is SyncFlow's consumer service, built by New and run, once, by Run.
type Service struct {
	cfg   Config
	log   *slog.Logger
	ln    net.Listener // nil without an HTTP address
	lease *store.Lease
	st    *store.Store
	nats  *stream.Conn
	rules *consumer.Rules
	obs   *observer

	// catalog is the catalog in force; catalogVersion its stored version (0
	// for a catalog the config holds, which is not followed).
	catalog        *catalog.Live
	catalogVersion atomic.Int64
	reloadMu       sync.Mutex // reloads take turns: the watcher's, each stray drain's
	refusedVersion int        // the stored version last refused (under reloadMu)
	// lastRuleProblems is what was last reported of the rules that do not fit;
	// rulesMu makes the rule updates (the mapping watcher's, a catalog
	// reload's) take turns.
	rulesMu          sync.Mutex
	lastRuleProblems string
	lastRules        string // the rules last put in force, to log a change once
	entities         *entityConsumers
	bound            map[consumerKey]*stream.Fetcher // the entities' fetchers bound at start
	strays           []*consumer.Strays
	deadLetters      *deadletter.Worker
	gaveUp           *deadletter.GaveUpDrain // nil without the advisories stream

	closers []func() // what New opened, closed in reverse order
}

// Run builds the service and runs it until ctx ends (New, then Service.Run). A
// stop while it is starting is a clean one.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
	return s.Run(ctx)
}

// New builds the service, in the order of its steps; what it opened is closed
// again when a step fails, or when Run returns.
func New(ctx context.Context, cfg Config) (_ *Service, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Service{cfg: cfg, log: cfg.Logger}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	for _, step := range []func(context.Context) error{s.claim, s.openStore, s.loadRules, s.connect, s.bind} {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Service) onClose(f func()) { s.closers = append(s.closers, f) }

func (s *Service) close() {
	for _, f := range slices.Backward(s.closers) {
		f()
	}
	s.closers = nil
}

// claim takes the HTTP address, so that a second process on the same address
// stops before it has any effect; then the lease on the replica name, before
// anything is touched, so that a second process under a live name refuses to
// start.
func (s *Service) claim(ctx context.Context) error {
	if s.cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("metrics and health on %s: %w (is another syncflow running on this host? give this one another --http-addr)", s.cfg.HTTPAddr, err)
		}
		s.ln = ln
		s.onClose(func() { _ = ln.Close() })
	}
	replica := s.cfg.Consumer.Replica
	lease, err := store.AcquireLease(ctx, s.cfg.DatabaseURL, replica, leaseTag(replica), s.cfg.LeaseWait)
	if err != nil {
		return err
	}
	s.lease = lease
	s.onClose(lease.Release)
	return nil
}

// migrate applies the pending bridge migrations and logs the versions.
func (s *Service) migrate() error {
	m, err := store.NewMigrator(s.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer m.Close()
	from, _, _, err := m.Version()
	if err != nil {
		return fmt.Errorf("migrate up: %w", err)
	}
	if err := m.Up(); err != nil {
		return fmt.Errorf("migrate up: %w", err)
	}
	to, _, _, err := m.Version()
	switch {
	case err != nil:
		// Migrated: only the log line lacks its version.
		s.log.Warn("bridge schema migrated; reading its version again failed", "from", from, "err", err)
	case to != from:
		s.log.Info("bridge schema migrated", "from", from, "to", to)
	default:
		s.log.Info("bridge schema up to date", "version", to)
	}
	return nil
}

// openStore migrates when asked, opens the pool, checks the schema and the target
// tables, and closes the batches a previous run of this replica left running.
func (s *Service) openStore(ctx context.Context) error {
	cfg := s.cfg
	if cfg.Migrate {
		if err := s.migrate(); err != nil {
			return err
		}
	}
	st, err := store.Open(ctx, store.Config{URL: cfg.DatabaseURL, MaxConns: cfg.MaxConns, StatementTimeout: cfg.StatementTimeout,
		LockTimeout: cfg.LockTimeout, IdleInTransactionTimeout: cfg.IdleInTransactionTimeout})
	if err != nil {
		return err
	}
	s.st = st
	s.onClose(st.Close)
	if cfg.Migrate && cfg.BuiltInCatalog != nil {
		if v, stored, err := st.StoreCatalogIfNone(ctx, cfg.BuiltInCatalog, leaseTag(cfg.Consumer.Replica), "the built-in catalog, stored on a new database"); err != nil {
			return err
		} else if stored {
			s.log.Info("stored the built-in catalog (replace it with `syncflow catalog apply FILE`)", "version", v)
		}
	}
	if err := s.loadCatalog(ctx); err != nil {
		return err
	}
	cfg = s.cfg
	if err := CheckSchema(ctx, st); err != nil {
		return err
	}
	if err := st.PrepareTargets(ctx, cfg.Catalog); err != nil {
		return err
	}
	// The months ahead of sync_batches and failed_records; a failure is not fatal
	// (their DEFAULT partitions take the rows) and is tried again every hour.
	if n, err := st.EnsurePartitions(ctx, time.Now()); err != nil {
		s.log.Warn("creating the monthly partitions failed; trying again within the hour", "err", err)
	} else if n > 0 {
		s.log.Info("created monthly partitions", "partitions", n)
	}
	// A process that held the name until its connection dropped stops writing
	// within a check of the lease: when the name has batches running, let it,
	// before this one closes them.
	if n, err := st.RunningBatches(ctx, cfg.Consumer.Replica); err != nil {
		return err
	} else if n > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(store.LeaseSettle):
		}
	}
	if n, err := st.AbandonBatches(ctx, cfg.Consumer.Replica); err != nil {
		return err
	} else if n > 0 {
		s.log.Warn("closed batches a previous run of this replica left running", "replica", cfg.Consumer.Replica, "batches", n)
	}
	return nil
}

// loadRules loads the field mappings, refusing rules that do not compile or do
// not fit the target tables.
func (s *Service) loadRules(ctx context.Context) error {
	initial, err := s.st.LoadMappings(ctx)
	if err != nil {
		return err
	}
	set, err := mapping.Compile(initial)
	if err != nil {
		return fmt.Errorf("bridge.field_mappings holds invalid rules, fix them: %w", err)
	}
	if err := s.st.CheckRules(ctx, s.cfg.Catalog, initial); err != nil {
		return fmt.Errorf("bridge.field_mappings does not fit the target tables; fix the rules (syncflow mappings export, edit, import) or the tables:\n%w", err)
	}
	s.rules = &consumer.Rules{}
	s.rules.Store(set)
	return nil
}

// connect connects to NATS (or starts the embedded server) and applies the
// streams and consumers when asked.
func (s *Service) connect(ctx context.Context) error {
	conn, err := stream.Dial(s.cfg.NATS, s.cfg.EmbeddedNATSDir)
	if err != nil {
		return err
	}
	s.nats = conn
	s.onClose(conn.Close)
	if !s.cfg.ApplyStreams {
		return nil
	}
	plan, err := stream.PlanChanges(ctx, conn.JS, s.cfg.Streams, false)
	if err != nil {
		return err
	}
	if err := plan.Carry(ctx, conn.JS, s.cfg.Streams); err != nil {
		return err
	}
	s.log.Info("streams and consumers applied", "created", plan.Count(stream.Create), "updated", plan.Count(stream.Update), "unchanged", plan.Count(stream.Unchanged))
	return nil
}

// bind builds what runs: the applier they write with, the observer, a consumer
// bound to each entity's durable on each stream, a stray drain per stream, the
// dead-letter worker and the advisory drain.
func (s *Service) bind(ctx context.Context) error {
	cfg, log := s.cfg, s.log
	dlCfg := cfg.deadLetters()
	applier, err := apply.NewApplier(s.st, dlCfg.Stamp(apply.Config{IsolationTimeout: cfg.StatementTimeout, Logger: log}))
	if err != nil {
		return err
	}
	dls, err := deadletter.New(store.DeadLetters{Store: s.st}, applier, dlCfg)
	if err != nil {
		return err
	}
	w := writer{Applier: applier, Store: s.st, lease: s.lease, targetChanged: s.checkRules}
	s.catalog = catalog.NewLive(cfg.Catalog)
	if cfg.Streams.Advisories.Name != "" {
		advisories, err := stream.NewAdvisoryReader(ctx, s.nats.JS, cfg.Streams)
		if err != nil {
			return err
		}
		s.gaveUp = &deadletter.GaveUpDrain{Reader: advisories, Applier: applier, Catalog: s.catalog, Logger: log}
	}
	s.deadLetters = &deadletter.Worker{DeadLetters: dls, Catalog: s.catalog, Rules: s.rules.Load, Replica: cfg.Consumer.Replica}
	if s.catalogVersion.Load() > 0 {
		s.deadLetters.Refresh = func(ctx context.Context) { s.reloadCatalog(ctx, false) }
	}
	metrics := telemetry.NewMetrics()
	metrics.RegisterPool(func() telemetry.Pool { p := s.st.PoolStats(); return telemetry.Pool(p) })
	s.entities = newEntityConsumers(s.catalog, cfg.sources(), log)
	// Missing durables and changed consumer settings are looked for as often as
	// stray subjects.
	s.entities.retry = cmp.Or(cfg.StrayInterval, 10*time.Second)
	s.obs = &observer{m: metrics, st: s.st, nats: s.nats, catalog: s.catalog, fetchers: s.entities.fetchers, missing: s.entities.missingConsumers, log: log}
	ccfg := s.consumerConfig(metrics)
	backfillGate := make(chan struct{}, cfg.BackfillShare)
	for _, source := range cfg.sources() {
		finder := &stream.StrayFinder{JS: s.nats.JS, Source: source, Known: func(subject string) bool {
			entity, ok := strings.CutPrefix(subject, source.SubjectPrefix)
			_, known := s.catalog.Load().Entity(entity)
			return ok && known
		}}
		strays := &consumer.Strays{Find: fetchersOf(finder.Find), Catalog: s.catalog, Source: source, Writer: w,
			Config: cfg.strays(), Logger: log}
		if s.catalogVersion.Load() > 0 {
			// Before a subject is called a stray, the stored catalog is read again.
			strays.Refresh = func(ctx context.Context) { s.reloadCatalog(ctx, false) }
		}
		s.strays = append(s.strays, strays)
	}
	s.entities.bind = func(ctx context.Context, source event.Source, entity string) (*stream.Fetcher, error) {
		return stream.NewFetcher(ctx, s.nats.JS, source, source.Durable(entity))
	}
	s.entities.build = func(e *catalog.Entity, source event.Source, f *stream.Fetcher) *consumer.Consumer {
		c := &consumer.Consumer{Entity: e, Catalog: s.catalog, Source: source, Fetcher: f, Writer: w,
			Rules: s.rules, Config: ccfg, Logger: log}
		// Held messages are kept alive well within the consumer's ack wait.
		c.Config.AckWait = f.AckWait()
		if source == event.Backfill {
			c.Gate = backfillGate
		}
		return c
	}
	s.bound, err = s.entities.bindAll(ctx)
	return err
}

// consumerConfig is the consumers' configuration with the observer's hooks: every
// commit counted (and handed to the caller's OnCommit), every hold reported to
// /readyz, every escalation counted.
func (s *Service) consumerConfig(metrics *telemetry.Metrics) consumer.Config {
	cc := s.cfg.Consumer
	userHook := cc.OnCommit
	cc.OnCommit = func(entity string, source event.Source, msgs []pipeline.Message, res apply.Result) {
		s.obs.record(entity, source, msgs, res)
		if userHook != nil {
			userHook(entity, source, msgs, res)
		}
	}
	cc.OnHold = s.obs.hold
	cc.OnEscalate = func(entity string, source event.Source) {
		metrics.Escalations.WithLabelValues(entity, source.Name).Inc()
	}
	return cc
}

// Run runs the service until ctx ends, then shuts it down in order (see the
// package's doc). A failure of any part stops the whole, in the same order.
func (s *Service) Run(ctx context.Context) error {
	defer s.close()
	log := s.log
	// Two groups, stopped in order: workers hold what commits; infra what must
	// outlive it.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	workers, workCtx := errgroup.WithContext(runCtx)
	infraCtx, stopInfra := context.WithCancel(context.WithoutCancel(ctx))
	defer stopInfra()
	infra, ictx := errgroup.WithContext(infraCtx)
	goInfra := func(run func(context.Context) error) {
		infra.Go(func() error {
			err := run(ictx)
			if err != nil {
				stop()
			}
			return err
		})
	}
	// The lease is held until the last commit and the last checkpoint are done.
	goInfra(func(ctx context.Context) error { return s.lease.Keep(ctx, store.LeaseCheck, log) })
	if s.ln != nil {
		goInfra(func(ctx context.Context) error { return s.obs.serve(ctx, s.ln) })
		if s.cfg.OnListen != nil {
			s.cfg.OnListen(s.ln.Addr())
		}
		log.Info("serving /metrics, /healthz and /readyz", "addr", s.ln.Addr().String())
	}
	goInfra(func(ctx context.Context) error { return s.st.RunCheckpoints(ctx, s.cfg.CheckpointInterval, log) })
	goInfra(func(ctx context.Context) error { return s.obs.runRefresh(ctx, s.cfg.StatsInterval) })
	goInfra(func(ctx context.Context) error { return s.st.KeepPartitions(ctx, store.PartitionCheck, log) })

	for _, strays := range s.strays {
		workers.Go(func() error { return strays.Run(workCtx) })
	}
	workers.Go(func() error { return s.entities.Run(workCtx, s.bound) })
	workers.Go(func() error { return s.watchMappings(workCtx) })
	if s.catalogVersion.Load() > 0 {
		workers.Go(func() error { return s.watchCatalog(workCtx) })
	}
	workers.Go(func() error { return s.deadLetters.Run(workCtx) })
	if s.gaveUp != nil {
		workers.Go(func() error { return s.gaveUp.Run(workCtx) })
	}
	log.Info("syncflow running", "replica", s.cfg.Consumer.Replica, "entities", len(s.catalog.Load().Names()), "catalog_version", s.catalogVersion.Load(),
		"database", redact.String(s.cfg.DatabaseURL), "nats", s.nats.URL())

	err := workers.Wait()
	stopInfra() // after the last commit: the checkpointer's last flush writes its checkpoints
	err = errors.Join(err, infra.Wait())
	// The workers have acked or nakked what they held: let that reach the server.
	if ferr := s.nats.Flush(5 * time.Second); ferr != nil && err == nil {
		log.Warn("flushing NATS on shutdown failed", "err", ferr)
	}
	log.Info("syncflow stopped")
	return err
}

// watchMappings keeps the consumers' rules current: changes arrive by NOTIFY, and
// at least every MappingResync. Rules that do not compile are reported and the
// previous ones kept; rules that do not fit the target tables are put in force
// marked broken (see applyRules).
func (s *Service) watchMappings(ctx context.Context) error {
	return s.st.WatchMappings(ctx, s.cfg.MappingResync, s.log, func(rs []mapping.Rule) { s.applyRules(ctx, rs) })
}

// checkRules checks the rules in force against the catalog in force and the
// target tables, as they are now.
func (s *Service) checkRules(ctx context.Context) {
	rs, err := s.st.LoadMappings(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("reading the field mappings failed; keeping the rules in force", "err", err)
		}
		return
	}
	s.applyRules(ctx, rs)
}

// applyRules puts rs in force. A rule whose target column is missing (dropped
// since, or misspelled) or cannot take what it produces is reported, and fails
// the records it has a value for at stage mapping, with the reason: nothing is
// dropped without a trace, and the other rules keep working.
func (s *Service) applyRules(ctx context.Context, rs []mapping.Rule) {
	s.rulesMu.Lock()
	defer s.rulesMu.Unlock()
	log := s.log
	set, err := mapping.Compile(rs)
	if err != nil {
		log.Error("bridge.field_mappings holds invalid rules; keeping the previous ones", "err", err)
		return
	}
	// The target tables' columns, read again: a column added for a new rule is
	// written from now on.
	if err := s.st.PrepareTargets(ctx, s.catalog.Load()); err != nil {
		if ctx.Err() == nil {
			log.Warn("reading the target tables failed; keeping the rules in force", "err", err)
		}
		return
	}
	problems, err := s.st.RuleProblems(ctx, s.catalog.Load(), rs)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("checking the field mappings against the target tables failed; keeping the rules in force", "err", err)
		}
		return
	}
	if len(problems) > 0 {
		broken := map[mapping.RuleRef]string{}
		var lines []string
		for _, p := range problems {
			broken[p.Ref] = p.Reason
			lines = append(lines, p.String())
		}
		set = set.WithBroken(broken)
		if msg := strings.Join(lines, "; "); msg != s.lastRuleProblems {
			log.Error("field mappings do not fit the target tables: the records they map fail at stage mapping until the rule or the table is fixed", "problems", msg)
			s.lastRuleProblems = msg
		}
	} else if s.lastRuleProblems != "" {
		log.Info("field mappings fit the target tables again")
		s.lastRuleProblems = ""
	}
	s.rules.Store(set)
	if sum := fmt.Sprint(rs); sum != s.lastRules {
		log.Info("field mappings in force", "rules", len(rs))
		s.lastRules = sum
	}
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
	// targetChanged, when set, checks the rules against the target tables as
	// they are now, after a write found a table changed under the service.
	targetChanged func(ctx context.Context)
}

// ApplyBatch applies b while the lease is held. When a target table changed
// under it (a column dropped), the rules are checked again before the error
// goes back to the consumer, which prepares the batch again with them: a value
// whose column is gone then fails its record at stage mapping instead of being
// written without it.
func (w writer) ApplyBatch(ctx context.Context, b apply.Batch) (apply.Result, error) {
	if !w.lease.Held() {
		return apply.Result{}, fmt.Errorf("%w: the lease on the replica name is being taken again", apply.ErrUnavailable)
	}
	res, err := w.Applier.ApplyBatch(ctx, b)
	if errors.Is(err, apply.ErrTargetChanged) && w.targetChanged != nil {
		w.targetChanged(context.WithoutCancel(ctx))
	}
	return res, err
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
