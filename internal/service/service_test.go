package service_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/testenv"
)

// Each test has a database of its own (testenv.DB), a copy of the package's
// migrated template; no goroutine may outlive the tests.
func TestMain(m *testing.M) { os.Exit(testenv.MainTemplate(m, "service")) }

type env struct {
	t    *testing.T
	ctx  context.Context
	conn *pgx.Conn
	url  string // NATS
	db   string // the test's own database
	js   jetstream.JetStream
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}

func newEnv(t *testing.T, natsURL string) *env {
	t.Helper()
	ctx := context.Background()
	db := testenv.DB(t)
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return &env{t: t, ctx: ctx, conn: conn, url: natsURL, db: db, js: js, logs: &syncBuffer{}}
}

// start runs the service until the test ends (or the returned stop is called,
// which waits for Run to return); Run must return nil.
func (e *env) start(tune func(*service.Config)) (stop func()) {
	e.t.Helper()
	cat, defs := testenv.Shipped(e.t)
	cfg := service.Config{
		DatabaseURL: e.db, NATS: stream.Config{URL: e.url}, Catalog: cat, Streams: defs, ApplyStreams: true, Backfill: true,
		Consumer:           consumer.Config{Replica: "test", FetchWait: 100 * time.Millisecond, NakDelay: 500 * time.Millisecond},
		StrayInterval:      200 * time.Millisecond,
		CheckpointInterval: 50 * time.Millisecond,
		MappingResync:      time.Minute,
		Logger:             slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if tune != nil {
		tune(&cfg)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- service.Run(ctx, cfg) }()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				e.t.Errorf("service.Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			e.t.Errorf("service did not stop within 30s")
		}
	})
	e.t.Cleanup(stop)
	// Wait until the consumers exist.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.js.Consumer(e.ctx, event.Realtime.Stream, "syncflow_cdc_work_order_operations"); err == nil {
			return stop
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("service did not start:\n%s", e.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) publish(subject, body string) {
	e.t.Helper()
	if _, err := e.js.Publish(e.ctx, subject, []byte(body)); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) query(sql string) string {
	e.t.Helper()
	return testenv.Rows(e.t, e.conn, sql)
}

func (e *env) eventually(sql, want string, within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	var got string
	for time.Now().Before(deadline) {
		if got = e.query(sql); got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("%s\n got: %s\nwant: %s\nlogs:\n%s", sql, got, want, e.logs)
}

func site(contract string, ord int, desc string) string {
	return fmt.Sprintf(`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T%02d:%02d:%02dZ","data":{"CONTRACT":%q,"DESCRIPTION":%q}}`,
		ord/3600, ord/60%60, ord%60, contract, desc)
}

func TestEveryStageDeadLettersAndTheStreamMovesOn(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	if _, err := e.conn.Exec(e.ctx, `INSERT INTO bridge.field_mappings (uid, entity_name, source_field, target_field, transformation)
		VALUES (gen_random_uuid(), 'work_orders', 'LOT_SIZE', 'lot_size', 'decimal')`); err != nil {
		t.Fatal(err)
	}
	e.start(nil)
	wo := func(order, lot string) string {
		return fmt.Sprintf(`{"entity":"work_orders","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"ORDER_NO":%q,"CONTRACT":"S1","PART_NO":"P1","LOT_SIZE":%q}}`, order, lot)
	}
	e.publish("apismith.cdc.sites", site("S1", 1, "parent"))
	e.publish("apismith.cdc.items", `{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P1"}}`)
	e.eventually(`SELECT count(*) FROM bridge.synced_records`, "2", 10*time.Second)
	e.publish("apismith.cdc.work_orders", `{"entity":"work_orders"`)                                                              // decode
	e.publish("apismith.cdc.work_orders", `{"entity":"work_orders","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{}}`) // normalization
	e.publish("apismith.cdc.work_orders", wo("WO-2", "lots"))                                                                     // mapping
	e.publish("apismith.cdc.work_orders", wo("WO-3", "-5"))                                                                       // write (CHECK)
	e.publish("apismith.cdc.vendors", `{"entity":"vendors","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"ID":1}}`)
	e.publish("apismith.backfill.work_orders.extra", wo("WO-9", "1"))
	e.publish("apismith.cdc.work_orders", wo("WO-1", "12.5")) // good, after the poison
	e.eventually(`SELECT order_no, lot_size::text FROM schedulehub.work_orders`, "WO-1|12.5000", 20*time.Second)
	e.eventually(`SELECT entity_name, stage_failed, stream_seq FROM bridge.failed_records ORDER BY stream, stream_seq`,
		"unknown|decode|1\nwork_orders|decode|3\nwork_orders|normalization|4\nwork_orders|mapping|5\nwork_orders|write|6\nvendors|decode|7", 20*time.Second)
	if got := e.query(`SELECT count(*) FROM bridge.failed_records WHERE raw_bytes IS NULL OR length(raw_bytes) = 0 OR error_message = ''`); got != "0" {
		t.Errorf("%s dead letters without raw bytes or reason", got)
	}
}

func TestHotReloadOfMappings(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	e.start(nil)
	e.publish("apismith.cdc.sites", site("S1", 1, "plain"))
	e.eventually(`SELECT contract, description FROM schedulehub.sites`, "S1|plain", 10*time.Second)
	if _, err := e.conn.Exec(e.ctx, `INSERT INTO bridge.field_mappings (uid, entity_name, source_field, target_field, transformation)
		VALUES (gen_random_uuid(), 'sites', 'DESCRIPTION', 'description', 'uppercase')`); err != nil {
		t.Fatal(err)
	}
	// The rule reaches the running service by NOTIFY; wait for its reload before publishing.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.logs.String(), `msg="field mappings in force" rules=1`) {
		if time.Now().After(deadline) {
			t.Fatalf("the service did not reload the rules:\n%s", e.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.publish("apismith.cdc.sites", site("S2", 1, "shouted"))
	e.eventually(`SELECT contract, description FROM schedulehub.sites ORDER BY 1`, "S1|plain\nS2|SHOUTED", 10*time.Second)
}

// publishHistory publishes n versions for each of keys sites, every version of a key
// after the previous one except that each fifth is published before its
// predecessor; it returns the expected target state.
func publishHistory(t *testing.T, js jetstream.JetStream, keys, versions int, pace time.Duration) string {
	t.Helper()
	ctx := context.Background()
	for v := 1; v <= versions; v++ {
		for k := range keys {
			ord := v
			if v%5 == 4 {
				ord = v + 1
			} else if v%5 == 0 {
				ord = v - 1
			}
			body := site(fmt.Sprintf("K%03d", k), ord, fmt.Sprintf("v%d", ord))
			for {
				_, err := js.Publish(ctx, "apismith.cdc.sites", []byte(body))
				if err == nil {
					break
				}
				time.Sleep(50 * time.Millisecond) // the broker is restarting
			}
			time.Sleep(pace)
		}
	}
	var want []string
	for k := range keys {
		want = append(want, fmt.Sprintf("K%03d|v%d", k, versions))
	}
	return strings.Join(want, "\n")
}

func TestDatabaseOutageMidRun(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	e.start(func(c *service.Config) { c.Consumer.BatchSize = 50 })
	admin, err := pgx.Connect(e.ctx, testenv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(e.ctx)
	var dbName string
	if err := e.conn.QueryRow(e.ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	published := make(chan string, 1)
	go func() { published <- publishHistory(t, e.js, 100, 20, 500*time.Microsecond) }()
	time.Sleep(500 * time.Millisecond)
	// Refuse new connections and cut the existing ones, for a while.
	ident := pgx.Identifier{dbName}.Sanitize()
	if _, err := admin.Exec(e.ctx, `ALTER DATABASE `+ident+` ALLOW_CONNECTIONS false`); err != nil {
		t.Fatal(err)
	}
	defer admin.Exec(e.ctx, `ALTER DATABASE `+ident+` ALLOW_CONNECTIONS true`)
	if _, err := admin.Exec(e.ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, dbName); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if _, err := admin.Exec(e.ctx, `ALTER DATABASE `+ident+` ALLOW_CONNECTIONS true`); err != nil {
		t.Fatal(err)
	}
	want := <-published
	conn, err := pgx.Connect(e.ctx, e.db) // the test's own connection was cut too
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(e.ctx)
	e.conn = conn
	e.eventually(`SELECT contract, description FROM schedulehub.sites ORDER BY 1`, want, 60*time.Second)
	e.eventually(`SELECT count(*) FROM bridge.failed_records`, "0", time.Second)
	if !strings.Contains(e.logs.String(), "batch held: writing it failed; retrying") {
		t.Errorf("the outage was not noticed; the test did not test it:\n%s", e.logs)
	}
	// Redeliveries and retries counted once each: every fetched event has an outcome.
	e.eventually(`SELECT sum(rows_fetched) = sum(rows_inserted + rows_updated + rows_unchanged + rows_stale + rows_deleted + rows_parked + rows_failed) FROM bridge.sync_batches`, "true", time.Second)
}

// An outage much longer than max_deliver times the redelivery delays, with
// max_deliver 3 and a one-second ack_wait: first the database turns read-only (as
// after a failover: SQLSTATE 25006), then it refuses connections (55000). The
// consumers hold their batches and keep every message they hold alive, /readyz
// says why, and afterwards every event is applied, nothing is dead-lettered and
// JetStream redelivered nothing.
func TestLongOutageNeverSpendsMaxDeliver(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	addr := make(chan string, 1)
	var redelivered atomic.Int64
	e.start(func(c *service.Config) {
		for _, byEntity := range c.Streams.Consumers {
			for entity, cc := range byEntity {
				cc.MaxDeliver, cc.AckWait, cc.BackOff = 3, time.Second, nil
				byEntity[entity] = cc
			}
		}
		c.Consumer.BatchSize = 20
		c.Consumer.Heartbeat = 300 * time.Millisecond
		c.Consumer.OnCommit = func(_ string, _ event.Source, msgs []pipeline.Message, _ apply.Result) {
			for _, m := range msgs {
				if m.NumDelivered > 1 {
					redelivered.Add(1)
				}
			}
		}
		c.HTTPAddr = "127.0.0.1:0"
		c.OnListen = func(a net.Addr) { addr <- a.String() }
	})
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + <-addr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		addr <- resp.Request.URL.Host
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	admin, err := pgx.Connect(e.ctx, testenv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(e.ctx)
	var dbName string
	if err := e.conn.QueryRow(e.ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	ident := pgx.Identifier{dbName}.Sanitize()
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(e.ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	cut := func() {
		exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '` + dbName + `' AND pid <> pg_backend_pid()`)
	}
	defer admin.Exec(e.ctx, `ALTER DATABASE `+ident+` ALLOW_CONNECTIONS true`)
	defer admin.Exec(e.ctx, `ALTER DATABASE `+ident+` RESET default_transaction_read_only`)

	e.publish("apismith.cdc.sites", site("K000", 1, "before"))
	e.eventually(`SELECT description FROM schedulehub.sites`, "before", 10*time.Second)

	exec(`ALTER DATABASE ` + ident + ` SET default_transaction_read_only = on`)
	cut()
	want := publishHistory(t, e.js, 20, 10, 0)
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := readyz()
		if code == 503 && strings.Contains(body, "sites realtime holds a batch") && strings.Contains(body, "(database unavailable)") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz during the outage: %d %q", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(4 * time.Second)
	exec(`ALTER DATABASE ` + ident + ` ALLOW_CONNECTIONS false`)
	exec(`ALTER DATABASE ` + ident + ` RESET default_transaction_read_only`)
	cut()
	time.Sleep(4 * time.Second)
	exec(`ALTER DATABASE ` + ident + ` ALLOW_CONNECTIONS true`)

	conn, err := pgx.Connect(e.ctx, e.db) // the test's own connection was cut too
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(e.ctx)
	e.conn = conn
	e.eventually(`SELECT contract, description FROM schedulehub.sites ORDER BY 1`, want, 60*time.Second)
	if got := e.query(`SELECT count(*) FROM bridge.failed_records`); got != "0" {
		t.Errorf("%s dead letters after an outage:\n%s", got, e.query(`SELECT stage_failed, error_message FROM bridge.failed_records`))
	}
	for _, reason := range []string{"read-only transaction", "not currently accepting connections"} {
		if !strings.Contains(e.logs.String(), reason) {
			t.Errorf("the outage did not show %q; the test did not test it", reason)
		}
	}
	if n := redelivered.Load(); n != 0 {
		t.Errorf("%d messages were redelivered: the held ones were not kept alive", n)
	}
	deadline = time.Now().Add(10 * time.Second)
	for code, body := readyz(); code != 200; code, body = readyz() {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz after the outage: %d %q", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A stop commits the batches being written, then writes the checkpoints: the
// stored checkpoint is the highest committed rowversion, not the one of an
// earlier flush. Every write here takes a while, so a batch is being written
// when the stop comes, and the checkpointer writes nothing before the stop.
func TestStopFlushesTheLastCheckpoint(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	if _, err := e.conn.Exec(e.ctx, `
		CREATE FUNCTION schedulehub.test_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$;
		CREATE TRIGGER test_slow AFTER INSERT OR UPDATE ON schedulehub.sites FOR EACH STATEMENT EXECUTE FUNCTION schedulehub.test_slow()`); err != nil {
		t.Fatal(err)
	}
	defer e.conn.Exec(e.ctx, `DROP TRIGGER test_slow ON schedulehub.sites; DROP FUNCTION schedulehub.test_slow()`)
	stop := e.start(func(c *service.Config) {
		c.CheckpointInterval = time.Hour
		c.Consumer.BatchSize = 5
	})
	for i := 1; i <= 100; i++ {
		e.publish("apismith.cdc.sites", site(fmt.Sprintf("K%03d", i), i, "v"))
	}
	e.eventually(`SELECT count(*) > 10 FROM bridge.synced_records`, "true", 20*time.Second)
	stop()
	applied := e.query(`SELECT max(rowversion_ord) FROM bridge.synced_records WHERE entity_name = 'sites'`)
	if got := e.query(`SELECT rowversion_ord FROM bridge.erp_sync_state WHERE entity_name = 'sites'`); got != applied {
		t.Fatalf("checkpoint %s after the stop, want the highest committed %s", got, applied)
	}
	if e.query(`SELECT count(*) = 100 FROM bridge.synced_records`) == "true" {
		t.Fatal("every event was applied before the stop; the test did not stop mid-run")
	}
}

func TestNATSRestartMidRun(t *testing.T) {
	dir := t.TempDir()
	srv, err := stream.StartEmbedded("127.0.0.1", -1, dir)
	if err != nil {
		t.Fatal(err)
	}
	port := srv.Addr().(*net.TCPAddr).Port
	var mu sync.Mutex
	current := srv
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		current.Stop()
	})
	e := newEnv(t, srv.ClientURL())
	e.start(func(c *service.Config) { c.Consumer.BatchSize = 50 })
	published := make(chan string, 1)
	go func() { published <- publishHistory(t, e.js, 100, 20, 500*time.Microsecond) }()
	time.Sleep(500 * time.Millisecond)
	srv.Stop()
	time.Sleep(2 * time.Second)
	restarted, err := stream.StartEmbedded("127.0.0.1", port, dir)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	current = restarted
	mu.Unlock()
	want := <-published
	e.eventually(`SELECT contract, description FROM schedulehub.sites ORDER BY 1`, want, 60*time.Second)
	e.eventually(`SELECT count(*) FROM bridge.failed_records`, "0", time.Second)
	if !strings.Contains(e.logs.String(), "nats reconnected") {
		t.Errorf("the restart was not noticed; the test did not test it")
	}
}

// While a backfill of 200,000 rows flows, realtime events are still applied: they
// are all in the target while most of the backfill is still waiting.
func TestRealtimeKeepsPriorityDuringBackfill(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	e.start(nil)
	const backlog = 200_000
	for i := range backlog {
		body := fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"B%07d","DESCRIPTION":"backfill"}}`, i)
		if _, err := e.js.PublishAsync("apismith.backfill.items", []byte(body), jetstream.WithStallWait(stream.StallWait)); err != nil {
			t.Fatal(err)
		}
	}
	<-e.js.PublishAsyncComplete()
	// The backfill is flowing.
	e.eventually(`SELECT count(*) > 0 FROM bridge.synced_records WHERE source_stream = 'backfill'`, "true", 30*time.Second)
	for i := range 20 {
		e.publish("apismith.cdc.sites", site(fmt.Sprintf("RT%02d", i), 1, "realtime"))
	}
	e.eventually(`SELECT count(*) FROM schedulehub.sites`, "20", 30*time.Second)
	var done int
	if err := e.conn.QueryRow(e.ctx, `SELECT count(*) FROM bridge.synced_records WHERE source_stream = 'backfill'`).Scan(&done); err != nil {
		t.Fatal(err)
	}
	if done >= backlog/2 {
		t.Errorf("realtime events were applied only after %d of %d backfill rows", done, backlog)
	}
	t.Logf("realtime applied with %d of %d backfill rows done", done, backlog)
}

func TestMetricsAndHealth(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	addr := make(chan string, 1)
	e.start(func(c *service.Config) {
		c.HTTPAddr = "127.0.0.1:0"
		c.StatsInterval = 100 * time.Millisecond
		c.OnListen = func(a net.Addr) { addr <- a.String() }
	})
	base := "http://" + <-addr
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	e.publish("apismith.cdc.sites", site("S1", 1, "one"))
	e.publish("apismith.cdc.sites", `{"entity":"sites","op":"upsert"`)
	e.publish("apismith.cdc.work_centers", `{"entity":"work_centers","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S9","WORK_CENTER_NO":"W"}}`)
	e.publish("apismith.cdc.suppliers", `{"entity":"suppliers","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"ID":"X"}}`)
	e.eventually(`SELECT count(*) FROM bridge.pending_children`, "1", 10*time.Second)
	// The last verification of items found drift; the one after it failed and
	// counted nothing, so the one before stands.
	if _, err := e.conn.Exec(e.ctx, `INSERT INTO bridge.verifications (uid, entity_name, trigger, started_at, finished_at, missing, target_edited, error)
		VALUES (gen_random_uuid(), 'items', 'cli', '2026-11-27 10:00Z', '2026-11-27 10:00:07Z', 2, 5, NULL),
		       (gen_random_uuid(), 'items', 'schedule', '2026-11-27 11:00Z', '2026-11-27 11:00:01Z', 0, 0, 'APISmith is down')`); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`syncflow_drift_rows{entity="items",kind="missing"} 2`,
		`syncflow_drift_rows{entity="items",kind="target-edited"} 5`,
		`syncflow_drift_rows{entity="items",kind="stale"} 0`,
		`syncflow_last_verify_timestamp{entity="items"} 1.795773607e+09`,
		`syncflow_verify_failing{entity="items"} 1`,
		`syncflow_events_total{entity="sites",outcome="inserted",source="realtime"} 1`,
		`syncflow_events_total{entity="sites",outcome="failed",source="realtime"} 1`,
		`syncflow_events_total{entity="work_centers",outcome="parked",source="realtime"} 1`,
		`syncflow_dead_letters{entity="sites",stage="decode"} 1`,
		// A subject no catalog entity owns counts too, under one label.
		`syncflow_dead_letters{entity="_outside_catalog",stage="decode"} 1`,
		`syncflow_parked_children{entity="work_centers"} 1`,
		`syncflow_consumer_pending_messages{entity="sites",stream="APISMITH_CDC"} 0`,
		`syncflow_batch_duration_seconds_count{entity="sites",source="realtime"}`,
		`syncflow_end_to_end_lag_seconds_bucket{entity="sites",source="realtime",le="+Inf"}`,
		`syncflow_checkpoint_age_seconds{entity="sites",source_system="oracle_ifs"}`,
		`syncflow_db_pool_connections{state="total"}`,
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := get("/metrics")
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %s:\n%s", missing, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Batch durations are measured, not zero.
	_, body := get("/metrics")
	if m := regexp.MustCompile(`syncflow_batch_duration_seconds_sum\{entity="sites",source="realtime"\} (\S+)`).FindStringSubmatch(body); m == nil || m[1] == "0" {
		t.Errorf("batch duration sum: %v", m)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	srv.Stop()
	deadline = time.Now().Add(10 * time.Second)
	for {
		code, body := get("/readyz")
		if code == 503 && strings.Contains(body, "NATS is not connected") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with NATS down: %d %q", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz with NATS down: %d (alive is not ready)", code)
	}
	// The database refuses connections: /readyz gives the reason in its own
	// words, not the driver's error.
	admin, err := pgx.Connect(e.ctx, testenv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(e.ctx)
	var dbName string
	if err := e.conn.QueryRow(e.ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	ident := pgx.Identifier{dbName}.Sanitize()
	if _, err := admin.Exec(e.ctx, `ALTER DATABASE `+ident+` ALLOW_CONNECTIONS false`); err != nil {
		t.Fatal(err)
	}
	defer admin.Exec(e.ctx, `ALTER DATABASE `+ident+` ALLOW_CONNECTIONS true`)
	if _, err := admin.Exec(e.ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, dbName); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		code, body := get("/readyz")
		if code == 503 && strings.HasPrefix(body, "not ready: PostgreSQL is not reachable") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with the database refusing connections: %d %q", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := admin.Exec(e.ctx, `ALTER DATABASE `+ident+` ALLOW_CONNECTIONS true`); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.logs.String(), "not ready: PostgreSQL is not reachable") {
		t.Errorf("the cause was not logged:\n%s", e.logs)
	}
}

// A rule written past `mappings import` (by hand, or before the table changed)
// that names a column the target lacks is reported at reload, and fails the
// records it has a value for at stage mapping, with the reason, while the other
// rules keep working: nothing is dropped without a trace. At start it stops the
// service with the rule named.
func TestRulesThatDoNotFitTheTable(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	if _, err := e.conn.Exec(e.ctx, `INSERT INTO bridge.field_mappings (uid, entity_name, source_field, target_field, transformation)
		VALUES (gen_random_uuid(), 'sites', 'DESCRIPTION', 'description', 'uppercase')`); err != nil {
		t.Fatal(err)
	}
	e.start(nil)
	if _, err := e.conn.Exec(e.ctx, `INSERT INTO bridge.field_mappings (uid, entity_name, source_field, target_field, transformation)
		VALUES (gen_random_uuid(), 'sites', 'COMPANY', 'compnay', 'trim')`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.logs.String(), "field mappings do not fit the target tables: the records they map fail at stage mapping") {
		if time.Now().After(deadline) {
			t.Fatalf("the bad rule was not reported:\n%s", e.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(e.logs.String(), "schedulehub.sites has no column compnay (did you mean company?)") {
		t.Errorf("the report does not say what is wrong:\n%s", e.logs)
	}
	// The record with a COMPANY fails at stage mapping, saying why; the one
	// without is written, with the good rule applied.
	e.publish("apismith.cdc.sites", `{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S1","DESCRIPTION":"main","COMPANY":"Acme"}}`)
	e.publish("apismith.cdc.sites", `{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S2","DESCRIPTION":"second"}}`)
	e.eventually(`SELECT contract, description FROM schedulehub.sites`, "S2|SECOND", 10*time.Second)
	e.eventually(`SELECT stage_failed, error_message FROM bridge.failed_records`,
		"mapping|mapping: field COMPANY -> compnay: schedulehub.sites has no column compnay (did you mean company?): its values would be dropped", 10*time.Second)

	// A new start refuses the rules, naming the one at fault.
	cat, defs := testenv.Shipped(t)
	err := service.Run(e.ctx, service.Config{DatabaseURL: e.db, NATS: stream.Config{URL: srv.ClientURL()}, Catalog: cat, Streams: defs,
		Consumer: consumer.Config{Replica: "refused"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "(sites COMPANY -> compnay): schedulehub.sites has no column compnay") {
		t.Errorf("start with a rule that does not fit: %v", err)
	}
}
