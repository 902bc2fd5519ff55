package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/syncflow/syncflow/internal/memlimit"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/streams"
)

func runCommand() command {
	return command{path: "run", summary: "consume change events and write them to ScheduleHub (the service)", setup: setupRun}
}

// defaultReplica is the name of this process in sync_batches and of its lease:
// the host name, so that two hosts never share one by default.
func defaultReplica() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		return "syncflow"
	}
	return host
}

func setupRun(f *flags) runFunc {
	var (
		c          common
		n          natsFlags
		defs       definitions
		cfg        service.Config
		maxConns   int
		cpuProfile string
		memLimit   int64
	)
	c.register(f)
	n.register(f)
	defs.register(f)
	cc := &cfg.Consumer
	f.string(&cc.Replica, "replica", defaultReplica(), "name of this replica in sync_batches; one running process per name (default: the host name)")
	f.int(&cc.BatchSize, "batch-size", 500, "most messages fetched and written in one transaction")
	f.int(&cc.Lanes, "lanes", 2, "most transactions writing one large batch side by side, each over keys of its own (1: one transaction per batch)")
	f.int(&cc.LaneMin, "lane-min", 100, "fewest keys a lane of a batch is given: smaller batches are written in one transaction")
	f.duration(&cc.FetchWait, "fetch-wait", time.Second, "how long an idle fetch waits for a message")
	f.duration(&cc.BatchWindow, "batch-window", time.Minute, "length of one rolling realtime sync_batches row")
	f.duration(&cc.RetryFor, "retry-for", 0, "give up retrying a batch after a database failure after this long and nak it (0: retry until it commits)")
	f.duration(&cc.NakDelay, "nak-delay", 5*time.Second, "with --retry-for, first redelivery delay of a batch given up; doubles per delivery up to 5m")
	f.duration(&cc.ShutdownGrace, "shutdown-grace", 10*time.Second, "how long a batch being written at shutdown may take to commit")
	f.duration(&cc.BatchTimeout, "batch-timeout", 2*time.Minute, "deadline of one attempt to write a batch")
	f.int(&cc.EscalateAfter, "escalate-after", 3, "timeouts of one batch before its rows are isolated and those that time out alone are dead-lettered")
	f.duration(&cc.Heartbeat, "heartbeat", 10*time.Second, "how often held messages are kept alive (InProgress); keep it under the consumers' ack_wait")
	f.duration(&cfg.StatementTimeout, "statement-timeout", 30*time.Second, "statement_timeout of SyncFlow's database sessions (0: the server's)")
	f.duration(&cfg.LockTimeout, "lock-timeout", 10*time.Second, "lock_timeout of SyncFlow's database sessions (0: the server's)")
	f.duration(&cfg.IdleInTransactionTimeout, "idle-in-transaction-timeout", time.Minute, "idle_in_transaction_session_timeout of SyncFlow's database sessions (0: the server's)")
	f.bool(&cfg.Migrate, "migrate", false, "apply pending bridge migrations before starting")
	f.bool(&cfg.ApplyStreams, "apply-streams", false, "create or update the streams and consumers before starting")
	f.bool(&cfg.Backfill, "backfill", true, "also consume the backfill stream")
	f.string(&cfg.EmbeddedNATSDir, "embedded-nats-dir", "", "when no NATS answers at --nats-url, start an embedded JetStream server storing here")
	f.duration(&cfg.MappingResync, "mapping-resync", 30*time.Second, "reload the field mappings, and look at the stored catalog, at least this often (changes also arrive by NOTIFY)")
	f.duration(&cfg.StrayInterval, "stray-interval", 10*time.Second, "how often to look for subjects no catalog entity owns (their messages are dead-lettered)")
	f.duration(&cfg.CheckpointInterval, "checkpoint-interval", 500*time.Millisecond, "how often the checkpoints in bridge.erp_sync_state are written")
	f.duration(&cfg.DeadLetterInterval, "dead-letter-interval", 5*time.Second, "how often parked children are re-checked and due dead letters retried")
	f.duration(&cfg.Park.FirstRetry, "park-first-retry", 30*time.Second, "first re-check of a parked child; later ones wait twice as long each")
	f.duration(&cfg.Park.MaxDelay, "park-max-delay", time.Hour, "longest wait between re-checks of a parked child")
	f.int(&cfg.Park.MaxRetries, "park-max-retries", 10, "re-checks of a parked child before it becomes an orphan dead letter")
	f.duration(&cfg.Retry.FirstRetry, "retry-first", time.Minute, "first automatic retry of a dead letter; later ones wait twice as long each")
	f.duration(&cfg.Retry.MaxDelay, "retry-max-delay", time.Hour, "longest wait between automatic retries of a dead letter")
	f.int(&cfg.Retry.MaxRetries, "retry-max", 5, "automatic retries of a dead letter (mapping, write and max_deliver stages)")
	f.int(&cfg.BackfillShare, "backfill-share", 1, "backfill batches written at once across all entities (realtime is not limited)")
	f.string(&cfg.HTTPAddr, "http-addr", "127.0.0.1:9464", "where to serve /metrics, /healthz and /readyz (empty: nowhere)")
	f.duration(&cfg.StatsInterval, "stats-interval", 15*time.Second, "how often gauges (dead letters, parked, lag, backfill) are refreshed")
	f.int(&maxConns, "max-conns", 8, "most database connections")
	f.size(&memLimit, "memory-limit", defaultMemoryLimit, "soft limit of the memory the Go runtime holds (not the binary's pages), kept while the live heap is small and raised when it stays large; 0: none (GOMEMLIMIT in the environment wins)")
	f.string(&cpuProfile, "cpu-profile", "", "diagnostics: write a CPU profile (pprof) of the whole run to this file")
	f.duration(&cfg.LeaseWait, "lease-wait", 5*time.Second, "at start, how long to wait for the replica name while another process holds it (one that was just killed lets go)")
	return func(ctx context.Context, _ []string) error {
		stop, err := startCPUProfile(cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
		log, err := c.logger(os.Stderr)
		if err != nil {
			return err
		}
		// Without --catalog, the service reads the stored catalog once it has
		// migrated the database (which stores the built-in catalog in a new
		// one), and follows every version stored after it.
		if defs.catalogPath != "" {
			if cfg.Catalog, err = defs.catalogIn(ctx, nil); err != nil {
				return err
			}
		}
		cfg.StreamsFS = defs.streamsFS()
		if cfg.BuiltInCatalog, err = fs.ReadFile(streams.FS, streams.CatalogFile); err != nil {
			return err
		}
		limitMemory(ctx, memLimit, os.Getenv("GOMEMLIMIT"), log)
		cfg.DatabaseURL, cfg.MaxConns, cfg.Logger = c.databaseURL, int32(maxConns), log
		n.cfg.Name, n.cfg.Logger = "syncflow-"+cc.Replica, log
		cfg.NATS = n.cfg
		err = service.Run(ctx, cfg)
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return nil // stopped by a signal while starting: a clean stop
		}
		return err
	}
}

// defaultMemoryLimit is run's --memory-limit: with it, a backlog of every
// entity at once peaks at about 64 MiB of RSS, the binary's pages included
// (docs/benchmarks.md).
const defaultMemoryLimit = 44 << 20

// limitMemory keeps the runtime's soft memory limit at limit (raised while the
// live heap stays large: package memlimit) until ctx ends, and says at start
// which limit is in force. A GOMEMLIMIT in the environment is the operator's,
// and the runtime keeps it as it is (not raised); a limit of 0 leaves the
// runtime's default.
func limitMemory(ctx context.Context, limit int64, env string, log *slog.Logger) {
	switch {
	case env != "":
		inForce := debug.SetMemoryLimit(-1)
		if inForce < lowMemoryLimit {
			log.Warn("memory limit: GOMEMLIMIT from the environment is very low, and the collector will run nearly all the time; GOMEMLIMIT=off is no limit, and without GOMEMLIMIT --memory-limit applies",
				"GOMEMLIMIT", env, "limit", memlimit.FormatSize(inForce))
			return
		}
		log.Info("memory limit: GOMEMLIMIT from the environment, kept as it is; --memory-limit not applied", "GOMEMLIMIT", env)
	case limit > 0:
		log.Info("memory limit", "floor", memlimit.FormatSize(limit))
		go memlimit.Run(ctx, memlimit.Config{Floor: limit, Logger: log})
	default:
		log.Info("memory limit: none (--memory-limit 0)")
	}
}

// lowMemoryLimit is the limit below which a GOMEMLIMIT gets a warning: below
// the live heap of a service at rest.
const lowMemoryLimit = 16 << 20

// startCPUProfile writes a CPU profile to path until stop (nothing when path is
// empty).
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	out, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		out.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); out.Close() }, nil
}
