package main

import (
	"context"
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

	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/streams"
)

func runCmd(ctx context.Context, args []string) error {
	var (
		c             common
		n             natsFlags
		defs          definitions
		cfg           consumer.Config
		migrateFirst  bool
		applyStreams  bool
		backfill      bool
		embeddedDir   string
		mappingResync time.Duration
		strayInterval time.Duration
	)
	host, _ := os.Hostname()
	f := newFlags("run", "run [flags]")
	c.register(f)
	n.register(f)
	defs.register(f)
	f.string(&cfg.Replica, "replica", host, "name of this replica in sync_batches")
	f.int(&cfg.BatchSize, "batch-size", 500, "most messages fetched and written in one transaction")
	f.duration(&cfg.FetchWait, "fetch-wait", time.Second, "how long an idle fetch waits for a message")
	f.duration(&cfg.BatchWindow, "batch-window", time.Minute, "length of one rolling realtime sync_batches row")
	f.duration(&cfg.RetryFor, "retry-for", 20*time.Second, "in-process retries of a batch after a database failure before its messages are nakked")
	f.bool(&migrateFirst, "migrate", false, "apply pending bridge migrations before starting")
	f.bool(&applyStreams, "apply-streams", false, "create or update the streams and consumers before starting")
	f.bool(&backfill, "backfill", true, "also consume the backfill stream")
	f.string(&embeddedDir, "embedded-nats-dir", "", "when no NATS answers at --nats-url, start an embedded JetStream server storing here")
	f.duration(&mappingResync, "mapping-resync", 30*time.Second, "reload field mappings at least this often (changes also arrive by NOTIFY)")
	f.duration(&strayInterval, "stray-interval", 10*time.Second, "how often to look for subjects no catalog entity owns (their messages are dead-lettered)")
	if err := f.parse(args); err != nil {
		return err
	}
	log, err := c.logger(os.Stderr)
	if err != nil {
		return err
	}
	cat, err := defs.catalog()
	if err != nil {
		return err
	}
	sdefs, err := defs.streams(cat)
	if err != nil {
		return err
	}

	if migrateFirst {
		m, err := store.NewMigrator(c.databaseURL)
		if err != nil {
			return err
		}
		err = m.Up()
		m.Close()
		if err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
	}
	st, err := store.Open(ctx, store.Config{URL: c.databaseURL})
	if err != nil {
		return err
	}
	defer st.Close()
	if err := checkSchema(ctx, st); err != nil {
		return err
	}
	if err := st.PrepareTargets(ctx, cat); err != nil {
		return err
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
	rules.Store(set)

	n.cfg.Name, n.cfg.Logger = "syncflow-"+cfg.Replica, log
	nc, embedded, err := connectNATS(n.cfg, embeddedDir, log)
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
	if applyStreams {
		if err := stream.Apply(ctx, js, sdefs); err != nil {
			return err
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	sources := []struct {
		name   string
		source pipeline.Source
	}{{streams.Realtime, pipeline.Realtime}}
	if backfill {
		sources = append(sources, struct {
			name   string
			source pipeline.Source
		}{streams.Backfill, pipeline.Backfill})
	}
	for _, src := range sources {
		prefix := event.RealtimePrefix
		if src.source == pipeline.Backfill {
			prefix = event.BackfillPrefix
		}
		finder := &stream.StrayFinder{JS: js, Stream: src.name, Source: src.source, Known: func(subject string) bool {
			_, ok := cat.Entity(strings.TrimPrefix(subject, prefix))
			return ok && strings.HasPrefix(subject, prefix)
		}}
		strays := &consumer.Strays{Find: finder.Find, Catalog: cat, Source: src.source, Writer: st, Interval: strayInterval, Replica: cfg.Replica, Logger: log}
		g.Go(func() error { return strays.Run(gctx) })
		for _, e := range cat.Entities() {
			durable := sdefs.Consumers[src.name][e.Name].Durable
			fetcher, err := stream.NewFetcher(ctx, js, src.name, durable, src.source)
			if err != nil {
				return err
			}
			cons := &consumer.Consumer{Entity: e, Catalog: cat, Source: src.source, Fetcher: fetcher, Writer: st, Rules: rules, Config: cfg, Logger: log}
			g.Go(func() error { return cons.Run(gctx) })
		}
	}
	g.Go(func() error {
		return st.WatchMappings(gctx, mappingResync, log, func(rs []mapping.Rule) {
			set, err := mapping.Compile(rs)
			if err != nil {
				log.Error("bridge.field_mappings holds invalid rules; keeping the previous ones", "err", err)
				return
			}
			rules.Store(set)
			log.Debug("field mappings loaded", "rules", len(rs))
		})
	})
	log.Info("syncflow running", "replica", cfg.Replica, "entities", len(cat.Names()), "database", store.RedactURL(c.databaseURL), "nats", nc.ConnectedUrlRedacted())
	err = g.Wait()
	// Consumers have nakked what was in flight; let the acks and naks reach the server.
	if derr := nc.FlushTimeout(5 * time.Second); derr != nil && err == nil {
		log.Warn("flushing NATS on shutdown failed", "err", derr)
	}
	log.Info("syncflow stopped")
	return err
}

// checkSchema refuses to start against a schema that is not the one this binary
// was built with.
func checkSchema(ctx context.Context, st *store.Store) error {
	want, err := store.Latest()
	if err != nil {
		return err
	}
	have, dirty, err := st.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	switch {
	case dirty:
		return fmt.Errorf("the bridge schema is dirty at version %d: fix the failed migration, then `syncflow migrate force %d` and `syncflow migrate up`", have, have-1)
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
		return nil, nil, fmt.Errorf("nats URL %q: %v", cfg.URL, perr)
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
