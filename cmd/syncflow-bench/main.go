// Command syncflow-bench measures SyncFlow against two baselines in one run, on this
// machine, with the same events: (a) SyncFlow end to end (the real binary draining a
// backlog: events/s and peak RSS; the service at a steady rate: publish-to-commit
// latency), (b) a naive consumer that commits one transaction per message, and (c)
// the ceiling: the same events pulled 1,000 at a time and bulk-upserted into a bare
// table with nothing else, fetching the next batch while writing the current one.
// Each figure is the median of -runs runs. `make bench` runs it.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/testenv"
	"github.com/syncflow/syncflow/streams"
)

type config struct {
	n, naiveN, runs int
	lanes           int    // --lanes of the syncflow runs (0: its default)
	childEnv        string // comma-separated NAME=value added to the syncflow runs' environment
	rates           string
	latencyFor      time.Duration
	binary          string
	dupShare, ooo   float64
	skip            string
	batch           int
	backfillRows    int64
	ledgerKeys      int64
	orphans, months int    // unresolved orphans waiting for parents that never come, over this many months of partitions
	noParkingKey    bool   // drop the foreign key of parked children to their batch, to measure what it costs
	keyCollation    string // give the ledger's, the parked children's and the dead letters' keys this collation, to measure what collation costs
	verifyRows      int64
	history, commit string
}

func main() {
	var cfg config
	flag.IntVar(&cfg.n, "n", 100_000, "events per SyncFlow and ceiling run")
	flag.IntVar(&cfg.naiveN, "naive-n", 20_000, "events per naive run (it is slow; the rate is what counts)")
	flag.IntVar(&cfg.runs, "runs", 3, "runs per figure; the median is reported")
	flag.StringVar(&cfg.rates, "rates", "1000,5000", "comma-separated events/s of the latency runs")
	flag.StringVar(&cfg.history, "history", "", "append the figures, dated, to the history table of this markdown file")
	flag.StringVar(&cfg.commit, "commit", "", "the commit measured, for the history")
	flag.DurationVar(&cfg.latencyFor, "latency-for", 15*time.Second, "length of the latency run")
	flag.IntVar(&cfg.lanes, "lanes", 0, "--lanes of the syncflow runs (0: its default)")
	flag.StringVar(&cfg.childEnv, "syncflow-env", "", "comma-separated NAME=value added to the environment of the syncflow runs (GOMEMLIMIT=48MiB, GOGC=50)")
	flag.StringVar(&cfg.binary, "binary", "bin/syncflow", "the syncflow binary to measure")
	flag.Float64Var(&cfg.dupShare, "dup", 0.05, "share of duplicate events")
	flag.Float64Var(&cfg.ooo, "ooo", 0.05, "share of out-of-order versions")
	flag.StringVar(&cfg.skip, "skip", "", "comma-separated figures to skip: syncflow,single,naive,ceiling,latency,backfill,memory,verify")
	flag.IntVar(&cfg.batch, "batch", 500, "SyncFlow's --batch-size")
	flag.Int64Var(&cfg.backfillRows, "backfill-rows", 100_000, "rows of the backfill figure")
	flag.IntVar(&cfg.orphans, "orphans", 0, "dead letter this many orphan operations, waiting for work orders that never come, before each SyncFlow run")
	flag.IntVar(&cfg.months, "months", 36, "months of dead-letter partitions the -orphans are spread over")
	flag.BoolVar(&cfg.noParkingKey, "without-parking-key", false, "drop pending_children's foreign key to sync_batches first, to measure what its checks cost (the schema's design requires the key)")
	flag.StringVar(&cfg.keyCollation, "key-collation", "", `give the key columns of the ledger, the parked children and the dead letters this collation first (e.g. C, or en-US-x-icu for an English database), to measure what comparing keys costs (SyncFlow's schema takes the database's)`)
	flag.Int64Var(&cfg.verifyRows, "verify-rows", 1_000_000, "items of the verify figure (1,000 of them drifted)")
	flag.Int64Var(&cfg.ledgerKeys, "ledger-keys", 0, "fill the ledger with this many other keys first (a ledger larger than PostgreSQL's buffers)")
	partitions := flag.Int("partitions", 0, "only the partition figure: load this many batches and as many dead letters over a year, prune a month")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the in-process figures (latency, backfill) to this file")
	flag.Parse()
	if *partitions > 0 {
		if err := partitionScale(*partitions); err != nil {
			fmt.Fprintln(os.Stderr, "syncflow-bench:", err)
			os.Exit(1)
		}
		return
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "syncflow-bench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "syncflow-bench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "syncflow-bench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

type bench struct {
	cfg    config
	ctx    context.Context
	srv    *stream.Embedded
	js     jetstream.JetStream
	nc     *nats.Conn
	dbURL  string
	pool   *pgxpool.Pool
	cat    *catalog.Catalog
	defs   stream.Definitions
	events []benchEvent
	want   map[string]map[string]int
	// cpu is the CPU split of each SyncFlow run.
	cpu []cpuSplit
}

func run(cfg config) error {
	ctx := context.Background()
	b := &bench{cfg: cfg, ctx: ctx}
	dir, err := os.MkdirTemp("", "syncflow-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if b.srv, err = stream.StartEmbedded("127.0.0.1", -1, dir); err != nil {
		return err
	}
	defer b.srv.Stop()
	if b.nc, err = nats.Connect(b.srv.ClientURL()); err != nil {
		return err
	}
	defer b.nc.Close()
	b.js, _ = jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(4000))
	db, drop, err := testenv.NewMigratedDatabase(ctx, "bench")
	if err != nil {
		return err
	}
	defer drop()
	b.dbURL = db.URL
	if b.pool, err = pgxpool.New(ctx, db.URL); err != nil {
		return err
	}
	defer b.pool.Close()
	if _, err := b.pool.Exec(ctx, `CREATE TABLE public.bare (k text PRIMARY KEY, ord bigint NOT NULL, seq bigint NOT NULL, payload jsonb NOT NULL)`); err != nil {
		return err
	}
	data, _ := fs.ReadFile(streams.FS, streams.CatalogFile)
	if b.cat, err = catalog.Parse(data); err != nil {
		return err
	}
	if b.defs, err = stream.LoadDefinitions(streams.FS, b.cat); err != nil {
		return err
	}
	if cfg.noParkingKey {
		if _, err := b.pool.Exec(ctx, `ALTER TABLE bridge.pending_children DROP CONSTRAINT pending_children_batch_uid_fkey`); err != nil {
			return err
		}
		fmt.Println("pending_children's foreign key to sync_batches dropped (-without-parking-key): not SyncFlow's schema")
	}
	if cfg.keyCollation != "" {
		coll := pgx.Identifier{cfg.keyCollation}.Sanitize()
		for table, cols := range map[string][]string{
			"synced_records":   {"entity_name", "bk_hash"},
			"pending_children": {"child_entity", "child_bk_hash", "parent_entity", "parent_bk_hash"},
			"failed_records":   {"entity_name", "bk_hash", "parent_entity", "parent_bk_hash"},
		} {
			alter := make([]string, len(cols))
			for i, c := range cols {
				alter[i] = "ALTER COLUMN " + c + " TYPE text COLLATE " + coll
			}
			if _, err := b.pool.Exec(ctx, "ALTER TABLE bridge."+table+" "+strings.Join(alter, ", ")); err != nil {
				return fmt.Errorf("-key-collation: %w", err)
			}
		}
		fmt.Printf("the key columns of the ledger, the parked children and the dead letters collate as %s (-key-collation): not SyncFlow's schema\n", coll)
	}
	if cfg.ledgerKeys > 0 {
		began := time.Now()
		if _, err := b.pool.Exec(ctx, `INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, payload_hash)
			SELECT 'zz_prefill', encode(sha256(i::text::bytea), 'hex'), jsonb_build_array('K' || i), '1', 1, 'realtime', i, sha256(i::text::bytea)
			FROM generate_series(1, $1::bigint) i`, cfg.ledgerKeys); err != nil {
			return err
		}
		if _, err := b.pool.Exec(ctx, `VACUUM ANALYZE bridge.synced_records`); err != nil {
			return err
		}
		var size, buffers string
		if err := b.pool.QueryRow(ctx, `SELECT pg_size_pretty(pg_total_relation_size('bridge.synced_records')), current_setting('shared_buffers')`).Scan(&size, &buffers); err != nil {
			return err
		}
		fmt.Printf("ledger prefilled with %d keys in %s: %s with its indexes; shared_buffers %s\n", cfg.ledgerKeys, time.Since(began).Round(time.Second), size, buffers)
	}
	b.events, b.want = generate(cfg.n, 42, cfg.dupShare, cfg.ooo)
	machine := b.machine()
	fmt.Printf("syncflow-bench: %d events (%.0f%% duplicates, %.0f%% out of order, ~%d bytes each), %d runs per figure, median reported; batch size %d\n",
		len(b.events), cfg.dupShare*100, cfg.ooo*100, len(b.events[0].body), cfg.runs, cfg.batch)
	fmt.Printf("machine: %s\n", machine)

	skip := func(name string) bool { return slices.Contains(strings.Split(cfg.skip, ","), name) }
	var res results
	if !skip("syncflow") {
		if res.syncflow, res.rss, err = b.repeat("syncflow", b.syncflowRun); err != nil {
			return err
		}
	}
	if len(b.cpu) > 0 {
		sfRates, pgRates := make([]float64, len(b.cpu)), make([]float64, len(b.cpu))
		for i, c := range b.cpu {
			sfRates[i], pgRates[i] = c.perCore()
		}
		res.sfPerCore, res.pgPerCore = median(sfRates), median(pgRates)
		fmt.Printf("syncflow cpu: %.0f events per CPU-second of SyncFlow, %.0f per CPU-second of PostgreSQL (median of %d runs)\n",
			res.sfPerCore, res.pgPerCore, len(b.cpu))
	}
	if !skip("ceiling") {
		if res.ceiling, res.ceilingShape, err = b.fairCeiling(); err != nil {
			return err
		}
	}
	if !skip("single") {
		// One entity with no parents: SyncFlow and the ceiling's shapes on the
		// same stream of items alone.
		all, want := b.events, b.want
		b.events, b.want = generateItems(cfg.n, 42, cfg.dupShare, cfg.ooo)
		fmt.Printf("items alone: %d events\n", len(b.events))
		if res.single.syncflow, _, err = b.repeat("syncflow", b.syncflowRun); err != nil {
			return err
		}
		if res.single.ceiling, res.single.shape, err = b.fairCeiling(); err != nil {
			return err
		}
		res.single.n = len(b.events)
		b.events, b.want = all, want
	}
	if !skip("naive") {
		if res.naive, _, err = b.repeat("naive", b.naiveRun); err != nil {
			return err
		}
	}
	if !skip("latency") {
		for _, r := range strings.Split(cfg.rates, ",") {
			rate, err := strconv.Atoi(strings.TrimSpace(r))
			if err != nil || rate <= 0 {
				return fmt.Errorf("-rates: %q is not a rate", r)
			}
			p50, p99, n, err := b.latencyRun(rate)
			if errors.Is(err, errBehind) {
				fmt.Printf("  latency at %d events/s: %v\n", rate, err)
				res.latency = append(res.latency, latencyFigure{rate: rate, n: n, behind: err.Error()})
				continue
			}
			if err != nil {
				return err
			}
			res.latency = append(res.latency, latencyFigure{rate: rate, p50: p50, p99: p99, n: n})
		}
	}
	if !skip("backfill") {
		if res.backfill, err = b.backfillRun(); err != nil {
			return err
		}
	}
	if !skip("memory") {
		if res.memory, err = b.memoryRun(); err != nil {
			return err
		}
	}
	if !skip("verify") {
		if res.verify, err = b.verifyRun(); err != nil {
			return err
		}
	}
	res.print(cfg)
	if cfg.history != "" {
		if err := res.appendHistory(cfg.history, cmp.Or(cfg.commit, "unknown"), machine, cfg); err != nil {
			return fmt.Errorf("appending to the history in %s: %w", cfg.history, err)
		}
		fmt.Printf("\nappended to the history in %s\n", cfg.history)
	}
	return nil
}

type results struct {
	syncflow, naive, ceiling float64 // events/s, medians
	ceilingShape             string  // the shape of the best ceiling
	rss                      float64 // MiB, the largest of the runs
	latency                  []latencyFigure
	backfill                 backfillFigure
	memory                   memoryFigure
	verify                   verifyFigure
	// single is one entity with no parents (items alone): SyncFlow and the
	// ceiling on the same single-entity stream.
	single singleFigure
	// sfPerCore and pgPerCore are events per CPU-second of SyncFlow and of
	// PostgreSQL during the SyncFlow runs (medians).
	sfPerCore, pgPerCore float64
}

type singleFigure struct {
	n                 int
	syncflow, ceiling float64
	shape             string
}

func (r results) print(cfg config) {
	fmt.Println()
	fmt.Println("figure                                   value")
	if r.syncflow > 0 {
		fmt.Printf("(a) SyncFlow end to end                  %8.0f events/s   (peak RSS %.0f MiB)\n", r.syncflow, r.rss)
	}
	if r.sfPerCore > 0 {
		fmt.Printf("    per CPU-second: SyncFlow %8.0f events, PostgreSQL %8.0f events\n", r.sfPerCore, r.pgPerCore)
	}
	if r.naive > 0 {
		fmt.Printf("(b) naive, one transaction per message   %8.0f events/s\n", r.naive)
	}
	if r.ceiling > 0 {
		fmt.Printf("(c) ceiling, bulk upsert, bare table     %8.0f events/s   (the best shape: %s)\n", r.ceiling, r.ceilingShape)
	}
	if s := r.single; s.syncflow > 0 {
		fmt.Printf("(d) items alone, %d events: SyncFlow %8.0f events/s, ceiling %8.0f (%s): %.2f\n", s.n, s.syncflow, s.ceiling, s.shape, s.syncflow/s.ceiling)
	}
	for _, l := range r.latency {
		if l.behind != "" {
			fmt.Printf("SyncFlow latency at %-5d events/s        did not keep up (%s)\n", l.rate, l.behind)
			continue
		}
		fmt.Printf("SyncFlow latency at %-5d events/s        p50 %v   p99 %v   (%d events)\n", l.rate, l.p50.Round(time.Millisecond), l.p99.Round(time.Millisecond), l.n)
	}
	if r.backfill.rows > 0 {
		fmt.Printf("backfill, APISmith source to target      %8.0f rows/s   (%d rows; realtime meanwhile at 100/s: p50 %v, p99 %v)\n",
			r.backfill.rate, r.backfill.rows, r.backfill.p50.Round(time.Millisecond), r.backfill.p99.Round(time.Millisecond))
	}
	if m := r.memory; m.releaseChildren > 0 {
		fmt.Printf("mass release, 1 parent, %d children      %8.1f s   (peak RSS %.0f MiB)\n", m.releaseChildren, m.releaseSeconds, m.releaseRSS)
		fmt.Printf("backlog of %d events of 1 MiB             peak RSS %.0f MiB\n", m.bigEvents, m.bigRSS)
	}
	if v := r.verify; v.rate > 0 {
		fmt.Printf("verify, %d keys (%d drifted) vs APISmith %8.0f keys/s   (peak RSS %.0f MiB)\n", v.rows, v.drifted, v.rate, v.rss)
	}
	if r.syncflow > 0 && r.naive > 0 {
		fmt.Printf("SyncFlow / naive                         %8.2f\n", r.syncflow/r.naive)
	}
	if r.syncflow > 0 && r.ceiling > 0 {
		fmt.Printf("SyncFlow / ceiling                       %8.2f\n", r.syncflow/r.ceiling)
	}
}

func mean(xs []float64) float64 {
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(max(len(xs), 1))
}

func median(xs []float64) float64 {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// repeat runs f cfg.runs times on a clean slate and returns the median rate and the
// largest extra figure f reports (peak RSS).
func (b *bench) repeat(name string, f func() (float64, float64, error)) (float64, float64, error) {
	var rates []float64
	var extra float64
	for i := range b.cfg.runs {
		if err := b.reset(); err != nil {
			return 0, 0, err
		}
		rate, x, err := f()
		if err != nil {
			return 0, 0, fmt.Errorf("%s run %d: %w", name, i+1, err)
		}
		fmt.Printf("  %-8s run %d: %8.0f events/s\n", name, i+1, rate)
		rates = append(rates, rate)
		extra = max(extra, x)
	}
	slices.Sort(rates)
	return rates[len(rates)/2], extra, nil
}

// reset empties every table and recreates the streams.
func (b *bench) reset() error {
	ledger := "bridge.synced_records, "
	if b.cfg.ledgerKeys > 0 {
		// The prefilled keys stay: only the bench's own go.
		ledger = ""
		if _, err := b.pool.Exec(b.ctx, `DELETE FROM bridge.synced_records WHERE entity_name <> 'zz_prefill'`); err != nil {
			return err
		}
	}
	if _, err := b.pool.Exec(b.ctx, `TRUNCATE bridge.sync_batches, `+ledger+`bridge.failed_records, bridge.erp_sync_state,
		schedulehub.sites, schedulehub.items, schedulehub.work_orders, schedulehub.work_centers, schedulehub.work_order_operations, public.bare CASCADE`); err != nil {
		return err
	}
	if err := b.waitingOrphans(); err != nil {
		return err
	}
	for name := range b.defs.Streams {
		if err := b.js.DeleteStream(b.ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return err
		}
	}
	return stream.Apply(b.ctx, b.js, b.defs)
}

// waitingOrphans dead letters cfg.orphans orphan operations whose work orders
// never come, one a month back from now over cfg.months months of partitions
// (as a site that has run for years keeps them), due for their next retry only
// tomorrow: a parent batch of work orders then has orphans of its entity to
// look for.
func (b *bench) waitingOrphans() error {
	if b.cfg.orphans == 0 {
		return nil
	}
	_, err := b.pool.Exec(b.ctx, `SELECT bridge.ensure_month_partitions('failed_records', now() - make_interval(months => $1), $1 + 3)`, b.cfg.months)
	if err != nil {
		return err
	}
	_, err = b.pool.Exec(b.ctx, `INSERT INTO bridge.failed_records (uid, entity_name, stream, stream_seq, raw_bytes, stage_failed, error_message,
			parent_entity, parent_bk_hash, next_retry_at, created_at)
		SELECT (left(bridge.uuid_floor(at)::text, 13) || '-7' || substr(gen_random_uuid()::text, 16))::uuid, 'work_order_operations',
		       'APISMITH_CDC', i, '\x7b7d', 'orphan', 'parent work_orders not applied', 'work_orders', 'never-' || i, now() + interval '1 day', at
		FROM generate_series(1, $1::int) i, LATERAL (SELECT now() - make_interval(months => i % $2)) m (at)`, b.cfg.orphans, b.cfg.months)
	if err != nil {
		return err
	}
	_, err = b.pool.Exec(b.ctx, `ANALYZE bridge.failed_records`)
	return err
}

// publish puts events on the realtime stream, async with bounded in-flight, and
// waits for every acknowledgement.
func (b *bench) publish(events []benchEvent) error {
	for _, ev := range events {
		if _, err := b.js.PublishAsync("apismith.cdc."+ev.entity, ev.body, jetstream.WithStallWait(stream.StallWait)); err != nil {
			return err
		}
	}
	select {
	case <-b.js.PublishAsyncComplete():
		return nil
	case <-time.After(5 * time.Minute):
		return errors.New("publishing did not complete")
	}
}

// syncflowRun drains a backlog with the real binary and checks the final state.
func (b *bench) syncflowRun() (float64, float64, error) {
	if err := b.publish(b.events); err != nil {
		return 0, 0, err
	}
	cmd := exec.Command(b.cfg.binary, "run", "--http-addr", "127.0.0.1:0", "--log-level", "warn", "--replica", "bench", "--batch-size", strconv.Itoa(b.cfg.batch))
	if b.cfg.lanes > 0 {
		cmd.Args = append(cmd.Args, "--lanes", strconv.Itoa(b.cfg.lanes))
	}
	if p := os.Getenv("SYNCFLOW_BENCH_PROFILE"); p != "" {
		cmd.Args = append(cmd.Args, "--cpu-profile", p)
	}
	cmd.Env = append(os.Environ(), "SYNCFLOW_DATABASE_URL="+b.dbURL, "SYNCFLOW_NATS_URL="+b.srv.ClientURL())
	if b.cfg.childEnv != "" {
		cmd.Env = append(cmd.Env, strings.Split(b.cfg.childEnv, ",")...)
	}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	start := time.Now()
	pgBefore := postgresCPU()
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("%w (build it: make build)", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	n := len(b.events)
	var rssKiB float64
	for {
		// Done when every event was fetched and written, and no child still
		// waits for a parent (a child parked while its parent committed beside
		// it is released by the re-check after that commit). The queue is
		// counted only once every event is: counting it every 20 ms took 1 s
		// of PostgreSQL's CPU in a 13 s drain, from the run measured.
		var done, parked int64
		if err := b.pool.QueryRow(b.ctx, `SELECT coalesce(sum(rows_fetched), 0) FROM bridge.sync_batches`).Scan(&done); err != nil {
			return 0, 0, err
		}
		if done >= int64(n) {
			if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM bridge.pending_children`).Scan(&parked); err != nil {
				return 0, 0, err
			}
		}
		rssKiB = max(rssKiB, peakRSS(cmd.Process.Pid))
		if done >= int64(n) && parked == 0 {
			break
		}
		if time.Since(start) > 10*time.Minute {
			return 0, 0, fmt.Errorf("only %d of %d events after 10 minutes", done, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	// What the run did besides writing: parking and releasing depend on how far
	// the children's consumers run ahead of their parents'.
	var work string
	if err := b.pool.QueryRow(b.ctx, `SELECT format('inserted %s, updated %s, unchanged %s, stale %s, parked %s, released %s',
		sum(rows_inserted), sum(rows_updated), sum(rows_unchanged), sum(rows_stale), sum(rows_parked), sum(rows_released)) FROM bridge.sync_batches`).Scan(&work); err != nil {
		return 0, 0, err
	}
	fmt.Println("  syncflow run:", work)
	rssKiB = max(rssKiB, peakRSS(cmd.Process.Pid))
	sfCPU, _ := processCPU(strconv.Itoa(cmd.Process.Pid), false)
	b.cpu = append(b.cpu, cpuSplit{events: n, syncflow: sfCPU, postgres: postgresCPU() - pgBefore})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	if err := b.verify(); err != nil {
		return 0, 0, err
	}
	return float64(n) / elapsed.Seconds(), rssKiB / 1024, nil
}

// verify compares the target with the newest version of every key.
func (b *bench) verify() error {
	checks := map[string]string{
		"sites":                 `SELECT contract, description FROM schedulehub.sites`,
		"work_centers":          `SELECT contract || '|' || work_center_no, description FROM schedulehub.work_centers`,
		"items":                 `SELECT part_no, description FROM schedulehub.items`,
		"work_orders":           `SELECT order_no, status FROM schedulehub.work_orders`,
		"work_order_operations": `SELECT order_no || '|' || operation_no, description FROM schedulehub.work_order_operations`,
	}
	for entity, sql := range checks {
		rows, err := b.pool.Query(b.ctx, sql)
		if err != nil {
			return err
		}
		got := map[string]string{}
		for rows.Next() {
			var k, v string
			if err := rows.Scan(&k, &v); err != nil {
				return err
			}
			got[k] = v
		}
		if err := rows.Err(); err != nil {
			return err
		}
		want := b.want[entity]
		if len(got) != len(want) {
			var parked, ledger, tombs int64
			_ = b.pool.QueryRow(b.ctx, `SELECT (SELECT count(*) FROM bridge.pending_children WHERE entity_name = $1),
				(SELECT count(*) FROM bridge.synced_records WHERE entity_name = $1 AND NOT deleted),
				(SELECT count(*) FROM bridge.synced_records WHERE entity_name = $1 AND deleted)`, entity).Scan(&parked, &ledger, &tombs)
			return fmt.Errorf("verify %s: %d rows, want %d (parked %d, in the ledger %d live and %d deleted)", entity, len(got), len(want), parked, ledger, tombs)
		}
		for k, v := range want {
			if got[k] != fmt.Sprintf("v%d", v) {
				return fmt.Errorf("verify %s %s: %q, want v%d", entity, k, got[k], v)
			}
		}
	}
	var failed, waiting int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*), count(*) FILTER (WHERE stage_failed = 'orphan' AND resolved_at IS NULL AND parent_bk_hash LIKE 'never-%')
		FROM bridge.failed_records`).Scan(&failed, &waiting); err != nil || failed != b.cfg.orphans || waiting != b.cfg.orphans {
		return fmt.Errorf("verify: %d dead letters, %d of them the waiting orphans, want %d (%v)", failed, waiting, b.cfg.orphans, err)
	}
	return nil
}

// peakRSS reads VmHWM (KiB) of a process.
func peakRSS(pid int) float64 { return float64(testenv.VmHWM(pid)) }

// baselineConsumer is a durable consumer over every realtime subject.
func (b *bench) baselineConsumer(name string) (jetstream.Consumer, error) {
	return b.js.CreateOrUpdateConsumer(b.ctx, event.Realtime.Stream, jetstream.ConsumerConfig{
		Durable: name, AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: "apismith.cdc.>",
		MaxAckPending: 10000, AckWait: time.Minute,
	})
}

type bareRow struct {
	key     string
	ord     int64
	seq     uint64
	payload []byte
}

// bareRows decodes what both baselines need: the key and version of each event,
// keeping the newest per key (a statement cannot upsert one key twice).
func (b *bench) bareRows(msgs []jetstream.Msg) ([]bareRow, error) {
	ds := make([]pipeline.Delivery, len(msgs))
	for i, m := range msgs {
		md, err := m.Metadata()
		if err != nil {
			return nil, err
		}
		ds[i] = pipeline.Delivery{Subject: m.Subject(), Source: event.Realtime, StreamSeq: md.Sequence.Stream, Data: m.Data()}
	}
	p := pipeline.Preparer{Catalog: b.cat}.Prepare(ds)
	if len(p.Failures) > 0 {
		return nil, fmt.Errorf("event did not decode: %v", p.Failures[0].Err)
	}
	rows := make([]bareRow, len(p.Candidates))
	for i, c := range p.Candidates {
		rows[i] = bareRow{key: c.Record.Entity + "/" + c.Record.BKHash, ord: c.Record.RowVersion.Ord, seq: c.Version.Seq, payload: ds[c.Index].Data}
	}
	return rows, nil
}

const bareUpsert = `
INSERT INTO public.bare AS t (k, ord, seq, payload)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::jsonb[])
ON CONFLICT (k) DO UPDATE SET ord = excluded.ord, seq = excluded.seq, payload = excluded.payload
WHERE (excluded.ord, excluded.seq) > (t.ord, t.seq)`

// naiveRun: one message, one transaction, one ack.
func (b *bench) naiveRun() (float64, float64, error) {
	events := b.events[:min(b.cfg.naiveN, len(b.events))]
	if err := b.publish(events); err != nil {
		return 0, 0, err
	}
	c, err := b.baselineConsumer("bench_naive")
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	for done := 0; done < len(events); {
		batch, err := c.Fetch(100, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return 0, 0, err
		}
		for m := range batch.Messages() {
			rows, err := b.bareRows([]jetstream.Msg{m})
			if err != nil {
				return 0, 0, err
			}
			r := rows[0]
			err = pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
				_, err := tx.Exec(b.ctx, bareUpsert, []string{r.key}, []int64{r.ord}, []int64{int64(r.seq)}, []string{string(r.payload)})
				return err
			})
			if err != nil {
				return 0, 0, err
			}
			_ = m.Ack()
			done++
		}
	}
	return float64(len(events)) / time.Since(start).Seconds(), 0, nil
}

// latencyRun publishes at a steady rate into the running service and measures, per
// event, the time from the stream storing it to the commit of its batch.
type latencyFigure struct {
	rate     int
	p50, p99 time.Duration
	n        int
	behind   string // why there is no figure: the service did not keep up with the rate
}

// errBehind is a latency run whose rate the service did not keep up with on this
// machine: a figure of its own, not a failure of the bench.
var errBehind = errors.New("the service did not keep up with the rate")

func (b *bench) latencyRun(rate int) (p50, p99 time.Duration, n int, err error) {
	if err := b.reset(); err != nil {
		return 0, 0, 0, err
	}
	var mu sync.Mutex
	var lat, took, before []time.Duration
	var sizes []float64
	onCommit := func(_ string, _ event.Source, msgs []pipeline.Message, res apply.Result) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			lat = append(lat, now.Sub(m.Delivery.Published))
			before = append(before, now.Add(-res.Took).Sub(m.Delivery.Published))
		}
		took = append(took, res.Took)
		sizes = append(sizes, float64(len(msgs)))
	}
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() {
		done <- service.Run(ctx, service.Config{
			DatabaseURL: b.dbURL, NATS: stream.Config{URL: b.srv.ClientURL()}, Catalog: b.cat, Streams: b.defs, Backfill: true,
			Consumer: consumer.Config{Replica: "bench", BatchSize: b.cfg.batch, OnCommit: onCommit},
			Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: benchLogLevel})),
		})
	}()
	time.Sleep(time.Second)
	// What the run cost: the CPU of this process (the service, its NATS server
	// and the publisher) and of PostgreSQL, in cores.
	start, pgBefore, selfBefore := time.Now(), postgresCPU(), selfCPU()
	total := int(b.cfg.latencyFor.Seconds() * float64(rate))
	tick := time.Second / time.Duration(rate)
	next := time.Now()
	for i := 0; i < total; i++ {
		ev := b.events[i%len(b.events)]
		if _, err := b.js.PublishAsync("apismith.cdc."+ev.entity, ev.body, jetstream.WithStallWait(stream.StallWait)); err != nil {
			cancel()
			return 0, 0, 0, err
		}
		next = next.Add(tick)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
	}
	<-b.js.PublishAsyncComplete()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		got := len(lat)
		mu.Unlock()
		if got >= total || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("  latency at %d events/s: CPU of the bench's process %.2f cores, of PostgreSQL %.2f cores\n",
		rate, (selfCPU()-selfBefore).Seconds()/secs, (postgresCPU()-pgBefore).Seconds()/secs)
	cancel()
	if err := <-done; err != nil {
		return 0, 0, 0, err
	}
	slices.Sort(lat)
	// Where the time goes: how large the batches were and how long writing one
	// took (from the fetch's hand-over to the commit, holds included); the rest
	// of an event's latency is waiting to be fetched and for the batch ahead.
	slices.Sort(took)
	slices.Sort(before)
	if len(took) > 0 {
		fmt.Printf("  latency at %d events/s: %d batches, size median %.0f (mean %.1f), write p50 %v p99 %v; an event's wait for its batch's write p50 %v p99 %v\n", rate, len(took),
			median(sizes), mean(sizes), took[len(took)/2].Round(100*time.Microsecond), took[len(took)*99/100].Round(100*time.Microsecond),
			before[len(before)/2].Round(100*time.Microsecond), before[len(before)*99/100].Round(100*time.Microsecond))
	}
	if len(lat) < total {
		return 0, 0, len(lat), fmt.Errorf("%w: %d of %d events committed within 30 s of the last publish", errBehind, len(lat), total)
	}
	return lat[len(lat)/2], lat[len(lat)*99/100], len(lat), nil
}
