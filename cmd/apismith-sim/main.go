// Command apismith-sim is a deterministic synthetic ERP behind APISmith's API, for
// demos, benchmarks and tests:
//
//	apismith-sim serve    serve the ERP over HTTP (the backfill's source)
//	apismith-sim publish  publish a burst of messy realtime traffic to NATS
//	apismith-sim expect   write the expected state of the snapshot alone
//	apismith-sim verify   compare ScheduleHub's tables with an expected state
//	apismith-sim drift    change the source and the target silently, without events
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/redact"
	"github.com/syncflow/syncflow/internal/sim"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "publish":
		err = publish(ctx, os.Args[2:])
	case "expect":
		err = expect(os.Args[2:])
	case "verify":
		err = verify(ctx, os.Args[2:])
	case "drift":
		err = drift(ctx, os.Args[2:], os.Stdout)
	case "-h", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "apismith-sim: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "apismith-sim:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `apismith-sim is a synthetic ERP for SyncFlow's demos and tests.

Usage: apismith-sim serve | publish | expect | verify | drift [flags]   (each has --help)

  serve    serve the ERP over APISmith's HTTP API (--admin: let publish and drift change it)
  publish  publish a burst of messy realtime traffic to NATS (--sim-url: and apply it to serve's ERP)
  expect   write the expected state of the snapshot alone
  verify   compare ScheduleHub's tables with an expected state
  drift    change rows of the source (through serve --admin) and of the target
           (ScheduleHub's tables) silently, without any event
`)
}

// sizes are the ERP's size flags, shared by every command.
func sizes(fs *flag.FlagSet) *sim.Config {
	c := &sim.Config{}
	fs.Int64Var(&c.Sites, "sites", 10, "sites")
	fs.Int64Var(&c.CentersPerSite, "centers-per-site", 10, "work centers per site")
	fs.Int64Var(&c.Items, "items", 1000, "items")
	fs.Int64Var(&c.WorkOrders, "work-orders", 1000, "work orders (three operations each)")
	return c
}

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	size := sizes(fs)
	var cfg sim.ServerConfig
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	fs.StringVar(&cfg.Token, "token", os.Getenv("APISMITH_SIM_TOKEN"), "require this bearer token ($APISMITH_SIM_TOKEN)")
	fs.DurationVar(&cfg.SlowPage, "slow-page", 0, "delay every page and lookup")
	fs.IntVar(&cfg.FailEvery, "fail-every", 0, "answer every n-th page or lookup with 503")
	fs.IntVar(&cfg.TruncateEvery, "truncate-every", 0, "truncate every n-th page or lookup answer")
	fs.BoolVar(&cfg.Admin, "admin", false, "serve POST /admin/traffic and /admin/drift, which change the ERP (for publish --sim-url and drift)")
	fs.Parse(args)
	srv := &http.Server{Addr: *addr, Handler: sim.New(*size).Handler(cfg), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	admin := ""
	if cfg.Admin {
		admin = " with the admin endpoints"
	}
	fmt.Fprintf(os.Stderr, "apismith-sim: serving %+v on http://%s%s\n", *size, *addr, admin)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// expectation is the file publish and expect write and verify reads.
type expectation struct {
	Config   sim.Config                 `json:"config"`
	Poison   int                        `json:"poison_events"`
	Entities map[string]sim.EntityState `json:"entities"`
}

func writeExpect(path string, e expectation) error {
	body, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, body, 0o644)
}

func publish(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("publish", flag.ExitOnError)
	size := sizes(fs)
	var t sim.TrafficConfig
	natsURL := fs.String("nats-url", nats.DefaultURL, "NATS server")
	fs.IntVar(&t.Events, "events", 10000, "events to publish")
	fs.Uint64Var(&t.Seed, "seed", 1, "seed of the traffic")
	rate := fs.Float64("rate", 0, "events per second (0: as fast as possible)")
	fs.Float64Var(&t.ChildrenFirst, "children-first", 0.02, "share of new work-order chains published children first")
	fs.Float64Var(&t.Duplicates, "dup", 0.05, "share of events published twice")
	fs.Float64Var(&t.OutOfOrder, "ooo", 0.05, "share of changes whose newer version is published first")
	fs.Float64Var(&t.Deletes, "deletes", 0.02, "share of deletes")
	fs.Float64Var(&t.Poison, "poison", 0.01, "share of poison events (malformed JSON, missing key)")
	out := fs.String("expect", "", "write the expected final state (snapshot plus this traffic) to this file")
	rowsOut := fs.String("expect-rows", "", "also write the expected rows (entity, key, check field; tab-separated) to this file")
	simURL := fs.String("sim-url", "", "after publishing, apply the same traffic to the rows apismith-sim serve --admin serves at this URL (e.g. http://127.0.0.1:8080), as a real ERP's would change")
	simToken := fs.String("sim-token", os.Getenv("APISMITH_SIM_TOKEN"), "the bearer token of --sim-url ($APISMITH_SIM_TOKEN)")
	fs.Parse(args)
	if err := t.Validate(); err != nil {
		return fmt.Errorf("the traffic flags (--children-first, --dup, --ooo, --deletes, --poison, --events): %w", err)
	}
	erp := sim.New(*size)
	events, changes := erp.Traffic(t)
	nc, err := nats.Connect(*natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2000))
	if err != nil {
		return err
	}
	start := time.Now()
	for i, ev := range events {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := js.PublishAsync(ev.Subject, ev.Body, jetstream.WithStallWait(30*time.Second)); err != nil {
			return err
		}
		if *rate > 0 {
			if d := time.Until(start.Add(time.Duration(float64(i+1) / *rate * float64(time.Second)))); d > 0 {
				time.Sleep(d)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return errors.New("JetStream did not acknowledge every event within a minute")
	}
	fmt.Fprintf(os.Stderr, "apismith-sim: published %d events (%d poison) in %v\n", len(events), changes.Poison, time.Since(start).Round(time.Millisecond))
	if *rowsOut != "" {
		f, err := os.Create(*rowsOut)
		if err != nil {
			return err
		}
		w := bufio.NewWriter(f)
		erp.Walk(changes, func(entity, key, check string) { fmt.Fprintf(w, "%s\t%s\t%s\n", entity, key, check) })
		if err := errors.Join(w.Flush(), f.Close()); err != nil {
			return err
		}
	}
	if *out != "" {
		if err := writeExpect(*out, expectation{Config: *size, Poison: changes.Poison, Entities: erp.Expect(changes)}); err != nil {
			return err
		}
	}
	if *simURL != "" {
		var res sim.TrafficResult
		if err := adminPost(ctx, *simURL, *simToken, "/admin/traffic", t, &res); err != nil {
			return fmt.Errorf("the events are published, but the source does not serve their changes: %w", err)
		}
		if res.Digest != sim.EventsDigest(events) {
			return fmt.Errorf("the simulator at %s made other traffic from the same flags (%d events; %d published): it serves an ERP of another size; start it with the same --sites, --centers-per-site, --items and --work-orders as publish", redact.String(*simURL), res.Events, len(events))
		}
		fmt.Fprintf(os.Stderr, "apismith-sim: the simulator at %s now serves the rows after this traffic\n", redact.String(*simURL))
	}
	return nil
}

// adminPost sends body to an admin endpoint of apismith-sim serve at simURL and
// decodes the answer into out.
func adminPost(ctx context.Context, simURL, token, path string, body, out any) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return err
	}
	u := strings.TrimRight(simURL, "/") + path
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("the simulator URL %q: %w", redact.String(simURL), err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Minute}).Do(req)
	if err != nil {
		return fmt.Errorf("reaching the simulator: %w (is apismith-sim serve --admin running at %s?)", err, redact.String(simURL))
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer of %s: %w", redact.String(u), err)
	}
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(answer, &e)
	switch {
	case resp.StatusCode == http.StatusOK:
		if err := json.Unmarshal(answer, out); err != nil {
			return fmt.Errorf("the answer of %s: %w", redact.String(u), err)
		}
		return nil
	case resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("the simulator at %s refused the token: pass the token it was started with (--sim-token or $APISMITH_SIM_TOKEN)", redact.String(simURL))
	case resp.StatusCode == http.StatusNotFound && e.Error == "":
		return fmt.Errorf("%s has no %s: is it apismith-sim serve --admin?", redact.String(simURL), path)
	case e.Error != "":
		return fmt.Errorf("the simulator: %s", e.Error)
	}
	return fmt.Errorf("%s answered HTTP %d: %s", redact.String(u), resp.StatusCode, strings.TrimSpace(string(answer)))
}

func expect(args []string) error {
	fs := flag.NewFlagSet("expect", flag.ExitOnError)
	size := sizes(fs)
	out := fs.String("expect", "expected.json", "write the snapshot's state to this file")
	fs.Parse(args)
	return writeExpect(*out, expectation{Config: *size, Entities: sim.New(*size).Expect(nil)})
}

// targetQuery reads each entity's live rows, in key order, as key and check field.
var targetQuery = map[string]string{
	"sites":                 `SELECT contract, coalesce(description, '') FROM schedulehub.sites ORDER BY contract`,
	"work_centers":          `SELECT contract || '|' || work_center_no, coalesce(description, '') FROM schedulehub.work_centers ORDER BY contract, work_center_no`,
	"items":                 `SELECT part_no, coalesce(description, '') FROM schedulehub.items WHERE deleted_at IS NULL ORDER BY part_no`,
	"work_orders":           `SELECT order_no, coalesce(status, '') FROM schedulehub.work_orders ORDER BY order_no`,
	"work_order_operations": `SELECT order_no || '|' || operation_no, coalesce(description, '') FROM schedulehub.work_order_operations ORDER BY order_no, operation_no`,
}

func verify(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("verify", flag.ExitOnError)
	dbURL := fs.String("database-url", defaultDatabaseURL(), "the database with ScheduleHub's tables (default $SYNCFLOW_DATABASE_URL, else the local syncflow database)")
	in := fs.String("expect", "expected.json", "the expected state")
	fs.Parse(args)
	body, err := os.ReadFile(*in)
	if err != nil {
		return err
	}
	var want expectation
	if err := json.Unmarshal(body, &want); err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	conn, err := pgx.Connect(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENTITY\tEXPECTED ROWS\tTARGET ROWS\tMATCH")
	ok := true
	for _, entity := range sim.Entities {
		rows, err := conn.Query(ctx, targetQuery[entity])
		if err != nil {
			return err
		}
		d := sim.NewDigest()
		for rows.Next() {
			var k, check string
			if err := rows.Scan(&k, &check); err != nil {
				return err
			}
			d.Add(k, check)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		got, exp := d.State(), want.Entities[entity]
		match := got == exp
		ok = ok && match
		fmt.Fprintf(tw, "%s\t%d\t%d\t%v\n", entity, exp.Rows, got.Rows, match)
	}
	var failed int
	_ = conn.QueryRow(ctx, `SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL`).Scan(&failed)
	fmt.Fprintf(tw, "dead letters\t%d\t%d\t%v\n", want.Poison, failed, failed == want.Poison)
	ok = ok && failed == want.Poison
	tw.Flush()
	if !ok {
		return errors.New("the target does not match the expected state")
	}
	fmt.Println("the target matches the simulator's expected state")
	return nil
}

// defaultDatabaseURL is SyncFlow's database as syncflow itself finds it:
// $SYNCFLOW_DATABASE_URL, else the local default.
func defaultDatabaseURL() string {
	if u := os.Getenv("SYNCFLOW_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/syncflow?sslmode=disable"
}
