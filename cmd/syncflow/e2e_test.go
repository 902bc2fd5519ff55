package main_test

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/testenv"
	"github.com/syncflow/syncflow/streams"
)

var (
	binary string
	dbURL  string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "syncflow-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "syncflow")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building syncflow: %v\n%s", err, out)
		os.Exit(1)
	}
	code := testenv.MainDatabase(m, "e2e", &dbURL)
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncflow runs the binary to completion.
func syncflow(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// service starts `syncflow run` and stops it with SIGTERM when the test ends,
// failing the test unless it exits 0.
func service(t *testing.T, env []string, args ...string) *bytes.Buffer {
	t.Helper()
	var logs bytes.Buffer
	cmd := exec.Command(binary, append([]string{"run", "--http-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		// A process signalled before its runtime reached main dies of the
		// signal instead of stopping cleanly: wait until it has said something.
		for deadline := time.Now().Add(10 * time.Second); logs.Len() == 0 && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("syncflow run exited with %v\n%s", err, logs.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("syncflow run did not stop within 20s of SIGTERM\n%s", logs.String())
		}
	})
	return &logs
}

func query(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	return testenv.Rows(t, conn, sql)
}

// eventually polls until sql returns want, or fails after a generous bound.
func eventually(t *testing.T, conn *pgx.Conn, sql, want string, logs *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got string
	for time.Now().Before(deadline) {
		if got = query(t, conn, sql); got == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s\n got: %s\nwant: %s\nlogs:\n%s", sql, got, want, logs)
}

func TestSitesAndItemsEndToEnd(t *testing.T) {
	ctx := context.Background()
	db, drop, err := testenv.NewMigratedDatabase(ctx, "e2e_sites")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop) // after the service stops (cleanups run last first)
	srv := testenv.NATS(t)
	env := []string{"SYNCFLOW_DATABASE_URL=" + db.URL, "SYNCFLOW_NATS_URL=" + srv.ClientURL(), "SYNCFLOW_LOG_FORMAT=json"}
	if out, err := syncflow(t, env, "streams", "apply"); err != nil {
		t.Fatalf("streams apply: %v\n%s", err, out)
	}
	// Applying again changes nothing and succeeds.
	if out, err := syncflow(t, env, "streams", "apply"); err != nil || !strings.Contains(out, "applied: 0 created, 0 updated, 0 deleted, 14 unchanged") {
		t.Fatalf("streams apply again: %v\n%s", err, out)
	}
	logs := service(t, env, "--replica", "e2e-1", "--fetch-wait", "200ms", "--stray-interval", "500ms")

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	publish := func(subject, body string) {
		t.Helper()
		if _, err := js.Publish(ctx, subject, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	publish("apismith.cdc.sites", `{"entity":"sites","op":"upsert","source_system":"oracle_ifs","rowversion":"2026-11-26T10:15:03Z","data":{"CONTRACT":" S1 ","DESCRIPTION":"Main plant","COMPANY":"ACME","UNKNOWN_COLUMN":"ignored"}}`)
	publish("apismith.cdc.items", `{"entity":"items","op":"upsert","rowversion":"20261126101504","data":{"PART_NO":"P-100","DESCRIPTION":"Bolt M8","UNIT_MEAS":"pcs","LEAD_TIME_DAYS":4}}`)
	publish("apismith.cdc.items", `{"entity":"items","op":"upsert","rowversion":"20261126101500","data":{"PART_NO":"P-100","DESCRIPTION":"older version"}}`)
	publish("apismith.cdc.sites", `{"entity":"sites", "op":`)
	publish("apismith.cdc.suppliers", `{"entity":"suppliers","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"SUPPLIER_ID":"X"}}`)

	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	eventually(t, conn, `SELECT count(*) FROM bridge.failed_records`, "2", logs)
	eventually(t, conn, `SELECT sum(rows_fetched)::int FROM bridge.sync_batches WHERE entity_name = 'items'`, "2", logs)

	if got, want := query(t, conn, `SELECT contract, description, company, time_zone FROM schedulehub.sites`), "S1|Main plant|ACME|<nil>"; got != want {
		t.Errorf("sites: %s, want %s", got, want)
	}
	if got, want := query(t, conn, `SELECT part_no, description, unit_meas, lead_time_days, deleted_at FROM schedulehub.items`), "P-100|Bolt M8|pcs|4|<nil>"; got != want {
		t.Errorf("items: %s, want %s", got, want)
	}
	if got, want := query(t, conn, `SELECT entity_name, business_key::text, rowversion, source_stream, stream_seq, deleted FROM bridge.synced_records ORDER BY entity_name`),
		`items|["P-100"]|2026-11-26T10:15:04Z|realtime|2|false`+"\n"+`sites|["S1"]|2026-11-26T10:15:03Z|realtime|1|false`; got != want {
		t.Errorf("ledger:\n%s\nwant\n%s", got, want)
	}
	// Checkpoints are written a moment after the commit (coalesced across batches).
	eventually(t, conn, `SELECT entity_name, source_system, last_sync_rowversion FROM bridge.erp_sync_state ORDER BY 1`,
		"items|oracle_ifs|2026-11-26T10:15:04Z\nsites|oracle_ifs|2026-11-26T10:15:03Z", logs)
	if got, want := query(t, conn, `SELECT entity_name, sync_type, replica, rows_fetched, rows_inserted, rows_stale, rows_failed
		FROM bridge.sync_batches WHERE entity_name IN ('sites', 'items') ORDER BY 1`),
		"items|realtime|e2e-1|2|1|1|0\nsites|realtime|e2e-1|2|1|0|1"; got != want {
		t.Errorf("batches:\n%s\nwant\n%s", got, want)
	}
	if got, want := query(t, conn, `SELECT entity_name, subject, stage_failed, convert_from(raw_bytes, 'UTF8') FROM bridge.failed_records ORDER BY stream_seq`),
		`sites|apismith.cdc.sites|decode|{"entity":"sites", "op":`+"\n"+
			`suppliers|apismith.cdc.suppliers|decode|{"entity":"suppliers","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"SUPPLIER_ID":"X"}}`; got != want {
		t.Errorf("dead letters:\n%s\nwant\n%s", got, want)
	}
	// The checkpoint's batch is the one that counted the write.
	if got := query(t, conn, `SELECT count(*) FROM bridge.erp_sync_state s JOIN bridge.sync_batches b ON b.uid = s.last_batch_uid AND b.entity_name = s.entity_name`); got != "2" {
		t.Errorf("checkpoints referencing their batch: %s, want 2", got)
	}
}

func TestRunRefusesBadStart(t *testing.T) {
	ctx := context.Background()
	db, drop, err := testenv.NewDatabase(ctx, "e2e_unmigrated")
	if err != nil {
		t.Fatal(err)
	}
	defer drop()
	srv := testenv.NATS(t)
	out, err := syncflow(t, []string{"SYNCFLOW_DATABASE_URL=" + db.URL, "SYNCFLOW_NATS_URL=" + srv.ClientURL()}, "run")
	if err == nil || !strings.Contains(out, "run `syncflow migrate up`") {
		t.Errorf("run against an unmigrated database: %v\n%s", err, out)
	}

	missing := strings.Replace(db.URL, db.Name, "syncflow_no_such_database", 1)
	out, err = syncflow(t, []string{"SYNCFLOW_DATABASE_URL=" + missing, "SYNCFLOW_NATS_URL=" + srv.ClientURL()}, "run")
	if err == nil || !strings.Contains(out, "/syncflow_no_such_database?sslmode=disable does not exist: create it (createdb, or make db)") {
		t.Errorf("run against a database that does not exist: %v\n%s", err, out)
	}

	bad := filepath.Join(t.TempDir(), "catalog.yaml")
	os.WriteFile(bad, []byte("entities:\n  work_orders:\n    key: [ORDER_NO]\n    parents: [{entity: plants, fields: [CONTRACT]}]\n    target: {table: schedulehub.work_orders, key: [order_no]}\n"), 0o644)
	out, err = syncflow(t, []string{"SYNCFLOW_DATABASE_URL=" + dbURL}, "run", "--catalog", bad)
	if err == nil || !strings.Contains(out, `entity "work_orders": parents: unknown parent entity "plants"`) {
		t.Errorf("run with an invalid catalog: %v\n%s", err, out)
	}

	out, err = syncflow(t, nil, "run", "--batch-size", "many")
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 2 || !strings.Contains(out, "see --help") {
		t.Errorf("bad flag: %v\n%s", err, out)
	}
	out, err = syncflow(t, nil, "migrate", "sideways", "--database-url", dbURL)
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 2 || !strings.Contains(out, "use up, down, version or force") {
		t.Errorf("unknown migrate action: %v\n%s", err, out)
	}
}

// run --migrate --apply-streams says what each did: on a new database and
// server, the versions it migrated through and the streams and consumers it
// created (three streams, ten consumers of the five entities, the advisories'
// one); on the next start, that nothing changed.
func TestRunSaysWhatItMigratedAndApplied(t *testing.T) {
	ctx := context.Background()
	db, drop, err := testenv.NewTargetDatabase(ctx, "e2e_fresh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	srv := testenv.NATS(t)
	env := []string{"SYNCFLOW_DATABASE_URL=" + db.URL, "SYNCFLOW_NATS_URL=" + srv.ClientURL(), "SYNCFLOW_LOG_FORMAT=json"}
	latest, err := store.Latest()
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]string{
		{fmt.Sprintf(`"msg":"bridge schema migrated","from":0,"to":%d`, latest), `"msg":"streams and consumers applied","created":14,"updated":0,"unchanged":0`},
		{fmt.Sprintf(`"msg":"bridge schema up to date","version":%d`, latest), `"msg":"streams and consumers applied","created":0,"updated":0,"unchanged":14`},
	} {
		logs := service(t, env, "--migrate", "--apply-streams", "--replica", fmt.Sprintf("fresh%d", i+1))
		waitForLog(t, logs, "syncflow running")
		for _, w := range want {
			if !strings.Contains(logs.String(), w) {
				t.Errorf("start %d: want %s in\n%s", i+1, w, logs.String())
			}
		}
	}
}

// SIGTERM at any moment, even while the service is still starting, is a clean stop.
func TestSigtermWhileStarting(t *testing.T) {
	srv := testenv.NATS(t)
	if out, err := syncflow(t, []string{"SYNCFLOW_NATS_URL=" + srv.ClientURL(), "SYNCFLOW_DATABASE_URL=" + dbURL}, "streams", "apply"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// From 100 ms on: before the process reaches main (a few milliseconds), any
	// program dies of the signal.
	for _, wait := range []time.Duration{100 * time.Millisecond, 150 * time.Millisecond, 250 * time.Millisecond} {
		cmd := exec.Command(binary, "run", "--http-addr", "127.0.0.1:0")
		cmd.Env = append(os.Environ(), "SYNCFLOW_DATABASE_URL="+dbURL, "SYNCFLOW_NATS_URL="+srv.ClientURL())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(wait)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("SIGTERM after %v: %v\n%s", wait, err, out.String())
		}
	}
}

func TestPasswordNeverLogged(t *testing.T) {
	srv := testenv.NATS(t)
	out, _ := syncflow(t, []string{"SYNCFLOW_NATS_URL=" + srv.ClientURL()}, "run", "--log-format", "json",
		"--database-url", "postgres://bridge_user:Sup3rSecret@127.0.0.1:1/syncflow?connect_timeout=1")
	if strings.Contains(out, "Sup3rSecret") || !strings.Contains(out, "bridge_user") {
		t.Errorf("output must name the user and hide the password:\n%s", out)
	}
}

func TestMappingsImportExport(t *testing.T) {
	env := []string{"SYNCFLOW_DATABASE_URL=" + dbURL}
	dir := t.TempDir()
	good := filepath.Join(dir, "rules.csv")
	os.WriteFile(good, []byte("entity_name,source_field,target_field,transformation,default_value,is_required\n"+
		"sites,description,description,trim|uppercase,,false\n"+
		"items,LEAD_TIME_DAYS,lead_time_days,integer,0,true\n"), 0o644)
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`[{"entity_name":"sites","source_field":"X","target_field":"y","transformation":"titlecase"},
		{"entity_name":"plants","source_field":"X","target_field":"z"}]`), 0o644)
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	conn.Exec(context.Background(), `DELETE FROM bridge.field_mappings`)
	t.Cleanup(func() { conn.Exec(context.Background(), `DELETE FROM bridge.field_mappings`) })
	count := func() string { return query(t, conn, `SELECT count(*) FROM bridge.field_mappings`) }

	out, err := syncflow(t, env, "mappings", "import", good, "--dry-run")
	if err != nil || !strings.Contains(out, "would import 2 rules") || !strings.Contains(out, "2 new") || count() != "0" {
		t.Fatalf("dry run: %v\n%s (rules now %s)", err, out, count())
	}
	out, err = syncflow(t, env, "mappings", "import", good)
	if err != nil || !strings.Contains(out, "imported 2 rules") || count() != "2" {
		t.Fatalf("import: %v\n%s", err, out)
	}
	out, err = syncflow(t, env, "mappings", "import", bad)
	if err == nil || !strings.Contains(out, `unknown transformation "titlecase"`) || !strings.Contains(out, `entity "plants" is not in the catalog`) ||
		!strings.Contains(out, "nothing was imported") || count() != "2" {
		t.Fatalf("bad import: %v\n%s", err, out)
	}
	out, err = syncflow(t, env, "mappings", "list")
	if err != nil || !strings.Contains(out, "sites   DESCRIPTION     description     trim|uppercase") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	// Export, then import the export: nothing changes.
	exported, err := syncflow(t, env, "mappings", "export", "--format", "json")
	if err != nil || !strings.Contains(exported, `"default_value": "0"`) {
		t.Fatalf("export: %v\n%s", err, exported)
	}
	round := filepath.Join(dir, "round.json")
	os.WriteFile(round, []byte(exported), 0o644)
	out, err = syncflow(t, env, "mappings", "import", round)
	if err != nil || !strings.Contains(out, "0 new, 0 changed, 2 unchanged") {
		t.Fatalf("re-import: %v\n%s", err, out)
	}
	// --replace removes the entity's rules the file does not list.
	only := filepath.Join(dir, "only.csv")
	os.WriteFile(only, []byte("entity_name,source_field,target_field,transformation,default_value,is_required\nitems,DESCRIPTION,description,trim,,false\n"), 0o644)
	out, err = syncflow(t, env, "mappings", "import", "--replace", only)
	if err != nil || !strings.Contains(out, "1 removed") {
		t.Fatalf("replace: %v\n%s", err, out)
	}
	if got := query(t, conn, `SELECT entity_name, source_field FROM bridge.field_mappings ORDER BY 1`); got != "items|DESCRIPTION\nsites|DESCRIPTION" {
		t.Fatalf("after replace: %s", got)
	}
}

// Killed with SIGKILL mid-run and stopped with SIGTERM mid-run, then restarted:
// the target ends as a perfect apply would leave it, nothing is dead-lettered, and
// every delivery is accounted for exactly once per batch.
func TestKillAndRestart(t *testing.T) {
	ctx := context.Background()
	db, drop, err := testenv.NewMigratedDatabase(ctx, "e2e_kill")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	srv := testenv.NATS(t)
	// Messages the killed process held come back after the ack wait: shorten it
	// (in the catalog's consumer settings, as an operator would) so the test need
	// not wait a minute.
	env := []string{"SYNCFLOW_DATABASE_URL=" + db.URL, "SYNCFLOW_NATS_URL=" + srv.ClientURL(), "SYNCFLOW_LOG_FORMAT=json", "SYNCFLOW_CATALOG=" + shortAckWait(t, 2*time.Second)}
	if out, err := syncflow(t, env, "streams", "apply"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)

	const keys, versions = 200, 15
	js.Publish(ctx, "apismith.cdc.sites", []byte(`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S1"}}`))
	js.Publish(ctx, "apismith.cdc.items", []byte(`{"entity":"items","op":"upsert","rowversion":"20260101000000","data":{"PART_NO":"P1"}}`))
	publishing := make(chan struct{})
	go func() {
		defer close(publishing)
		for v := 1; v <= versions; v++ {
			for k := range keys {
				body := fmt.Sprintf(`{"entity":"work_orders","op":"upsert","rowversion":"2026-01-01T00:00:%02dZ","data":{"ORDER_NO":"WO-%03d","CONTRACT":"S1","PART_NO":"P1","STATUS":"v%d"}}`, v, k, v)
				if _, err := js.PublishAsync("apismith.cdc.work_orders", []byte(body)); err != nil {
					t.Error(err)
					return
				}
				if k%50 == 0 {
					time.Sleep(2 * time.Millisecond)
				}
			}
		}
		<-js.PublishAsyncComplete()
	}()

	start := func() *exec.Cmd {
		cmd := exec.Command(binary, "run", "--http-addr", "127.0.0.1:0", "--batch-size", "20", "--fetch-wait", "100ms", "--replica", "k1")
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	waitSome := func(min int) {
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			var n int
			conn.QueryRow(ctx, `SELECT coalesce(sum(rows_fetched), 0)::int FROM bridge.sync_batches`).Scan(&n)
			if n >= min {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	cmd := start()
	waitSome(300)
	_ = cmd.Process.Kill() // SIGKILL: no chance to finish anything
	_ = cmd.Wait()
	cmd = start()
	waitSome(1200)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("SIGTERM: exit %v", err)
	}
	<-publishing
	logs := service(t, env, "--replica", "k1", "--fetch-wait", "100ms")

	var want []string
	for k := range keys {
		want = append(want, fmt.Sprintf("WO-%03d|v%d", k, versions))
	}
	eventually(t, conn, `SELECT order_no, status FROM schedulehub.work_orders ORDER BY 1`, strings.Join(want, "\n"), logs)
	eventually(t, conn, `SELECT count(*) FROM bridge.synced_records WHERE entity_name = 'work_orders' AND rowversion = '2026-01-01T00:00:15Z'`, fmt.Sprint(keys), logs)
	if got := query(t, conn, `SELECT count(*) FROM bridge.failed_records`); got != "0" {
		t.Errorf("%s dead letters", got)
	}
	// Every published event was fetched at least once; redeliveries after the kill
	// count again, and every count has exactly one outcome.
	// Wait until the redeliveries of what the killed process held are through.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := js.Consumer(ctx, "APISMITH_CDC", "syncflow_cdc_work_orders")
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer still has %d pending and %d unacked", info.NumPending, info.NumAckPending)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the last batch's counts commit before its acks
	var fetched int
	var balanced bool
	if err := conn.QueryRow(ctx, `SELECT sum(rows_fetched)::int, bool_and(rows_fetched = rows_inserted + rows_updated + rows_unchanged + rows_stale + rows_deleted + rows_parked + rows_failed)
		FROM bridge.sync_batches`).Scan(&fetched, &balanced); err != nil {
		t.Fatal(err)
	}
	if fetched < keys*versions || !balanced {
		t.Errorf("batches: fetched %d (want >= %d), balanced %v", fetched, keys*versions, balanced)
	}
	// The batch the SIGKILL left running was closed as failed at the restart; the
	// SIGTERM closed its own as completed.
	if got := query(t, conn, `SELECT count(*) > 0 FROM bridge.sync_batches WHERE status = 'failed' AND error_message LIKE 'the replica stopped without closing%'`); got != "true" {
		t.Errorf("the killed run's batch was not closed as failed")
	}
	if got := query(t, conn, `SELECT count(*) > 0 FROM bridge.sync_batches WHERE status = 'completed'`); got != "true" {
		t.Errorf("the stopped run's batch was not closed as completed")
	}
}

// shortAckWait writes the built-in catalog with every consumer's ack_wait set to
// d, and returns its path.
func shortAckWait(t *testing.T, d time.Duration) string {
	t.Helper()
	return editedCatalog(t, "ack_wait: "+d.String())
}

// editedCatalog writes the built-in catalog with the consumer settings set (YAML
// flow mapping content, e.g. "max_deliver: 3, ack_wait: 1s") for both streams,
// as an operator tunes them, and returns its path.
func editedCatalog(t *testing.T, set string) string {
	t.Helper()
	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	// The built-in consumers block gives way to the test's.
	text := string(data)
	start := strings.Index(text, "\nconsumers:\n")
	end := strings.Index(text[start+1:], "\n\n")
	if start < 0 || end < 0 {
		t.Fatal("the built-in catalog has no consumers block to replace")
	}
	block := "\nconsumers:\n  realtime: {" + set + "}\n  backfill: {" + set + "}\n"
	text = text[:start] + block + text[start+1+end+1:]
	file := filepath.Join(t.TempDir(), "catalog.yaml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}
