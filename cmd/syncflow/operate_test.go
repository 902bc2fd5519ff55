package main_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/testenv"
)

// world is a fresh database and NATS server for one test, with the binary's
// environment pointing at them.
type world struct {
	t    *testing.T
	ctx  context.Context
	db   string
	nats string
	env  []string
	conn *pgx.Conn
	js   jetstream.JetStream
}

func newWorld(t *testing.T, extraEnv ...string) *world {
	t.Helper()
	return newWorldOn(t, testenv.NATS(t).ClientURL(), extraEnv...)
}

// newWorldOn is newWorld on a NATS server of the test's choosing.
func newWorldOn(t *testing.T, natsURL string, extraEnv ...string) *world {
	t.Helper()
	ctx := context.Background()
	db, drop, err := testenv.NewMigratedDatabase(ctx, "e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	w := &world{t: t, ctx: ctx, db: db.URL, nats: natsURL}
	w.env = append([]string{"SYNCFLOW_DATABASE_URL=" + db.URL, "SYNCFLOW_NATS_URL=" + natsURL, "SYNCFLOW_LOG_FORMAT=json"}, extraEnv...)
	if out, err := syncflow(t, w.env, "streams", "apply"); err != nil {
		t.Fatalf("streams apply: %v\n%s", err, out)
	}
	if w.conn, err = pgx.Connect(ctx, db.URL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.conn.Close(ctx) })
	var opts []nats.Option
	for _, e := range extraEnv {
		if u, ok := strings.CutPrefix(e, "SYNCFLOW_NATS_USER="); ok {
			for _, p := range extraEnv {
				if pw, ok := strings.CutPrefix(p, "SYNCFLOW_NATS_PASSWORD="); ok {
					opts = append(opts, nats.UserInfo(u, pw))
				}
			}
		}
	}
	nc, err := nats.Connect(natsURL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	w.js, _ = jetstream.New(nc)
	return w
}

func (w *world) publish(entity, body string) {
	w.t.Helper()
	if _, err := w.js.Publish(w.ctx, "apismith.cdc."+entity, []byte(body)); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) query(sql string) string {
	w.t.Helper()
	return testenv.Rows(w.t, w.conn, sql)
}

// cli runs a syncflow command and returns its output and exit code.
func (w *world) cli(args ...string) (string, int) {
	w.t.Helper()
	out, err := syncflow(w.t, w.env, args...)
	if exit, ok := err.(*exec.ExitError); ok {
		return out, exit.ExitCode()
	} else if err != nil {
		w.t.Fatal(err)
	}
	return out, 0
}

func op(order string, no int, wc, desc string) string {
	return fmt.Sprintf(`{"entity":"work_order_operations","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"ORDER_NO":%q,"OPERATION_NO":%d,"CONTRACT":"S1","WORK_CENTER_NO":%q,"DESCRIPTION":%q}}`, order, no, wc, desc)
}

func workOrder(order, part string) string {
	return fmt.Sprintf(`{"entity":"work_orders","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"ORDER_NO":%q,"CONTRACT":"S1","PART_NO":%q,"STATUS":"Released"}}`, order, part)
}

func workCenter(wc string) string {
	return fmt.Sprintf(`{"entity":"work_centers","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"CONTRACT":"S1","WORK_CENTER_NO":%q}}`, wc)
}

const (
	siteS1 = `{"entity":"sites","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"CONTRACT":"S1","DESCRIPTION":"Main plant"}}`
)

func item(part string) string {
	return fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":"20261126080000","data":{"PART_NO":%q}}`, part)
}

// Children first, three levels deep: operations, then work orders, then work
// centers, then sites, then items. After the last parent arrives, every row is in
// the target and nothing is parked.
func TestChildrenBeforeParents(t *testing.T) {
	w := newWorld(t)
	logs := service(t, w.env, "--fetch-wait", "100ms")
	for o := range 3 {
		for _, no := range []int{10, 20} {
			w.publish("work_order_operations", op(fmt.Sprintf("WO%d", o), no, fmt.Sprintf("WC%d", no), "op"))
		}
	}
	eventually(t, w.conn, `SELECT count(*) FROM bridge.pending_children WHERE child_entity = 'work_order_operations'`, "6", logs)
	for o := range 3 {
		w.publish("work_orders", workOrder(fmt.Sprintf("WO%d", o), "P1"))
	}
	w.publish("work_centers", workCenter("WC10"))
	w.publish("work_centers", workCenter("WC20"))
	eventually(t, w.conn, `SELECT count(*) FROM bridge.pending_children`, "11", logs)
	w.publish("sites", siteS1)
	// The site releases the work centers; the work orders wait on for their item.
	eventually(t, w.conn, `SELECT child_entity, parent_entity, count(*) FROM bridge.pending_children GROUP BY 1, 2 ORDER BY 1`,
		"work_order_operations|work_orders|6\nwork_orders|items|3", logs)
	if out, code := w.cli("parked", "list"); code != 0 || !strings.Contains(out, "work_orders") || !strings.Contains(out, `["P1"]`) {
		t.Errorf("parked list (%d):\n%s", code, out)
	}
	w.publish("items", item("P1"))
	eventually(t, w.conn, `SELECT count(*) FROM bridge.pending_children`, "0", logs)
	for sql, want := range map[string]string{
		`SELECT count(*) FROM schedulehub.work_order_operations`: "6",
		`SELECT count(*) FROM schedulehub.work_orders`:           "3",
		`SELECT count(*) FROM schedulehub.work_centers`:          "2",
		`SELECT count(*) FROM schedulehub.sites`:                 "1",
		`SELECT count(*) FROM schedulehub.items`:                 "1",
		`SELECT count(*) FROM bridge.failed_records`:             "0",
	} {
		if got := w.query(sql); got != want {
			t.Errorf("%s = %s, want %s", sql, got, want)
		}
	}
	if out, code := w.cli("parked", "list", "--json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("parked list --json (%d): %s", code, out)
	}
}

// An orphan whose parent never comes becomes a dead letter at stage orphan.
func TestOrphan(t *testing.T) {
	w := newWorld(t)
	logs := service(t, w.env, "--fetch-wait", "100ms", "--park-first-retry", "100ms", "--park-max-retries", "3", "--dead-letter-interval", "100ms")
	w.publish("sites", siteS1)
	w.publish("work_centers", workCenter("WC1"))
	w.publish("work_orders", workOrder("WO-ORPHAN", "P-NEVER"))
	eventually(t, w.conn, `SELECT entity_name, stage_failed FROM bridge.failed_records`, "work_orders|orphan", logs)
	if got := w.query(`SELECT error_message LIKE 'parent items ["P-NEVER"] was never applied%' FROM bridge.failed_records`); got != "true" {
		t.Errorf("the orphan's error does not name its parent: %s", w.query(`SELECT error_message FROM bridge.failed_records`))
	}
	if got := w.query(`SELECT count(*) FROM bridge.pending_children`); got != "0" {
		t.Errorf("%s still parked", got)
	}
	uid := w.query(`SELECT uid::text FROM bridge.failed_records`)
	out, code := w.cli("dlq", "show", uid)
	if code != 0 || !regexp.MustCompile(`(?m)^stage +orphan$`).MatchString(out) || !strings.Contains(out, `"ORDER_NO":"WO-ORPHAN"`) {
		t.Errorf("dlq show (%d):\n%s", code, out)
	}
	out, code = w.cli("dlq", "resolve", uid, "--note", "order cancelled in the ERP")
	if code != 0 || w.query(`SELECT resolution_note FROM bridge.failed_records`) != "order cancelled in the ERP" {
		t.Errorf("dlq resolve (%d): %s", code, out)
	}
	if out, code := w.cli("dlq", "resolve", uid, "--note", "again"); code != 1 || !strings.Contains(out, "already resolved") {
		t.Errorf("resolving twice (%d): %s", code, out)
	}
	if out, code := w.cli("dlq", "show", "0190d6a0-0000-7000-8000-000000000000"); code != 3 || !strings.Contains(out, "no dead letter") {
		t.Errorf("unknown UID (%d): %s", code, out)
	}
	if out, code := w.cli("dlq", "show", "not-a-uid"); code != 2 || !strings.Contains(out, "is not a UID") {
		t.Errorf("malformed UID (%d): %s", code, out)
	}
	if out, code := w.cli("dlq", "purge", "--older-than", "1d"); code != 2 || !strings.Contains(out, "--resolved") {
		t.Errorf("purge without --resolved (%d): %s", code, out)
	}
	if out, code := w.cli("dlq", "purge", "--resolved", "--older-than", "1d"); code != 0 || !strings.Contains(out, "purged 0") {
		t.Errorf("purge of nothing old enough (%d): %s", code, out)
	}
	time.Sleep(10 * time.Millisecond)
	if out, code := w.cli("dlq", "purge", "--resolved", "--older-than", "1ms"); code != 0 || !strings.Contains(out, "purged 1") {
		t.Errorf("purge (%d): %s", code, out)
	}
}

// A mapping error dead-letters 50 events; after the rule is fixed,
// `syncflow dlq retry --entity` applies all 50 and marks them resolved.
func TestDeadLettersRetriedAfterMappingFix(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	broken, fixed := filepath.Join(dir, "broken.csv"), filepath.Join(dir, "fixed.csv")
	header := "entity_name,source_field,target_field,transformation,default_value,is_required\n"
	os.WriteFile(broken, []byte(header+"items,LEAD_TIME_DAYS,lead_time_days,integer,,true\n"), 0o644)
	os.WriteFile(fixed, []byte(header+"items,LEAD_TIME_DAYS,lead_time_days,integer,0,true\n"), 0o644)
	if out, code := w.cli("mappings", "import", broken); code != 0 {
		t.Fatalf("import: %s", out)
	}
	logs := service(t, w.env, "--fetch-wait", "100ms")
	for i := range 50 {
		w.publish("items", fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":"20261126080000","data":{"PART_NO":"P%02d","DESCRIPTION":"no lead time"}}`, i))
	}
	eventually(t, w.conn, `SELECT count(*) FROM bridge.failed_records WHERE stage_failed = 'mapping' AND resolved_at IS NULL`, "50", logs)
	if out, code := w.cli("dlq", "list", "--entity", "items", "--unresolved"); code != 0 || strings.Count(out, "required field LEAD_TIME_DAYS is missing") != 50 {
		t.Errorf("dlq list (%d):\n%s", code, out)
	}
	if out, code := w.cli("dlq", "retry", "--entity", "items", "--dry-run"); code != 0 || !strings.Contains(out, "would retry 50") {
		t.Errorf("dry run (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM schedulehub.items`); got != "0" {
		t.Fatalf("the dry run wrote %s rows", got)
	}
	if out, code := w.cli("mappings", "import", fixed); code != 0 {
		t.Fatalf("import: %s", out)
	}
	out, code := w.cli("dlq", "retry", "--entity", "items")
	if code != 0 || !strings.Contains(out, "retried 50 dead letters: 50 resolved, 0 failed again") {
		t.Fatalf("dlq retry (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*), min(lead_time_days) FROM schedulehub.items`); got != "50|0" {
		t.Errorf("items: %s", got)
	}
	if got := w.query(`SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NOT NULL`); got != "50" {
		t.Errorf("resolved: %s", got)
	}
	if out, code := w.cli("dlq", "retry", "--entity", "items"); code != 0 || !strings.Contains(out, "retried 0") {
		t.Errorf("nothing left to retry (%d): %s", code, out)
	}
}

// Replaying an hour that was already applied changes no target row; replaying
// after a mapping fix applies the fix.
func TestReplay(t *testing.T) {
	w := newWorld(t)
	logs := service(t, w.env, "--fetch-wait", "100ms")
	w.publish("sites", siteS1)
	for i := range 20 {
		w.publish("items", fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":"20261126080000","data":{"PART_NO":"P%02d","DESCRIPTION":" item %d "}}`, i, i))
	}
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.items`, "20", logs)
	checksum := `SELECT md5(string_agg(part_no || coalesce(description, '') || synced_at::text, ',' ORDER BY part_no)) FROM schedulehub.items`
	before := w.query(checksum)
	out, code := w.cli("replay", "--entity", "items", "--since", "1h")
	if code != 0 || !strings.Contains(out, "replayed 20 items events") || !strings.Contains(out, "20 unchanged") {
		t.Fatalf("replay (%d): %s", code, out)
	}
	if after := w.query(checksum); after != before {
		t.Errorf("replaying an applied hour changed the target: %s -> %s", before, after)
	}
	// The replay consumer is gone.
	if names := consumerNames(t, w.js, "APISMITH_CDC"); strings.Contains(names, "replay") {
		t.Errorf("replay consumer left behind: %s", names)
	}
	rules := filepath.Join(t.TempDir(), "rules.csv")
	os.WriteFile(rules, []byte("entity_name,source_field,target_field,transformation,default_value,is_required\nitems,DESCRIPTION,description,trim|uppercase,,false\n"), 0o644)
	if out, code := w.cli("mappings", "import", rules); code != 0 {
		t.Fatalf("import: %s", out)
	}
	out, code = w.cli("replay", "--entity", "items", "--from-seq", "1", "--to-seq", "11")
	if code != 0 || !strings.Contains(out, "replayed 10 items events") || !strings.Contains(out, "10 updated") {
		t.Fatalf("replay after the fix (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM schedulehub.items WHERE description LIKE 'ITEM %'`); got != "10" {
		t.Errorf("items with the fix applied: %s", got)
	}
	if out, code := w.cli("replay", "--entity", "items"); code != 2 {
		t.Errorf("replay without a range (%d): %s", code, out)
	}
	// Past the stream's end: nothing, and where the stream ends.
	for _, dry := range []string{"--dry-run", ""} {
		args := slices.DeleteFunc([]string{"replay", "--entity", "items", "--from-seq", "5000", dry}, func(a string) bool { return a == "" })
		if out, code := w.cli(args...); code != 0 || !regexp.MustCompile(`replay(ed)? 0 items events from APISMITH_CDC.*\(--from-seq 5000 is past the stream's last sequence, \d+\)`).MatchString(out) {
			t.Errorf("%v (%d): %s", args, code, out)
		}
	}
	if out, code := w.cli("replay", "--entity", "suppliers", "--since", "1h"); code != 3 {
		t.Errorf("replay of an unknown entity (%d): %s", code, out)
	}
}

// A replay is the service's consumer over a range: when the database cannot take
// its batch (here read-only, as after a failover) the replay holds the batch and
// retries it, and once the database is back the range is written, nothing is
// dead-lettered and the replay ends as usual.
func TestReplayHoldsItsBatchThroughAnOutage(t *testing.T) {
	w := newWorld(t)
	for i := range 5 {
		w.publish("items", fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":"20261126080000","data":{"PART_NO":"P%02d","DESCRIPTION":"item %d"}}`, i, i))
	}
	var db string
	if err := w.conn.QueryRow(w.ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	ident := pgx.Identifier{db}.Sanitize()
	sql := func(q string) {
		t.Helper()
		if _, err := w.conn.Exec(w.ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// New sessions are read-only; the test's own, older one is not.
	sql(`ALTER DATABASE ` + ident + ` SET default_transaction_read_only = on`)
	defer w.conn.Exec(w.ctx, `ALTER DATABASE `+ident+` RESET default_transaction_read_only`)
	var out syncBuffer
	cmd := exec.Command(binary, "replay", "--entity", "items", "--since", "1h")
	cmd.Env = append(os.Environ(), w.env...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitForLog(t, &out, "batch held: writing it failed; retrying")
	sql(`ALTER DATABASE ` + ident + ` RESET default_transaction_read_only`)
	sql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("replay: %v\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the replay did not end after the outage:\n%s", out.String())
	}
	if got := out.String(); !strings.Contains(got, "replayed 5 items events") || !strings.Contains(got, "5 inserted") {
		t.Errorf("replay output:\n%s", got)
	}
	if !strings.Contains(out.String(), "read-only transaction") {
		t.Errorf("the batch was not held by the read-only database; the test did not test it:\n%s", out.String())
	}
	if got := w.query(`SELECT count(*) FROM schedulehub.items`); got != "5" {
		t.Errorf("items after the replay: %s", got)
	}
	if got := w.query(`SELECT count(*) FROM bridge.failed_records`); got != "0" {
		t.Errorf("%s dead letters for an outage", got)
	}
}

func consumerNames(t *testing.T, js jetstream.JetStream, stream string) string {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	lister := s.ConsumerNames(context.Background())
	for n := range lister.Name() {
		names = append(names, n)
	}
	return strings.Join(names, ",")
}

// Two replicas on the same consumers, thousands of parent and child events
// interleaved at random: the final state is the expected one and nothing stays
// parked. The sweeper is held off (first re-check in 10 minutes), so every release
// comes from the parents' transactions.
func TestTwoReplicasParentsAndChildren(t *testing.T) {
	w := newWorld(t)
	args := []string{"--fetch-wait", "50ms", "--batch-size", "50", "--park-first-retry", "10m"}
	service(t, w.env, append(args, "--replica", "r1")...)
	service(t, w.env, append(args, "--replica", "r2")...)
	type ev struct{ entity, body string }
	var events []ev
	const orders, sites, centers = 400, 4, 20
	for s := range sites {
		events = append(events, ev{"sites", fmt.Sprintf(`{"entity":"sites","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"CONTRACT":"S%d"}}`, s)})
		for c := range centers {
			events = append(events, ev{"work_centers", fmt.Sprintf(`{"entity":"work_centers","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"CONTRACT":"S%d","WORK_CENTER_NO":"WC%d"}}`, s, c)})
		}
	}
	for o := range orders {
		s := o % sites
		events = append(events, ev{"items", item(fmt.Sprintf("P%d", o))})
		events = append(events, ev{"work_orders", fmt.Sprintf(`{"entity":"work_orders","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"ORDER_NO":"WO%d","CONTRACT":"S%d","PART_NO":"P%d"}}`, o, s, o)})
		for _, no := range []int{10, 20, 30} {
			events = append(events, ev{"work_order_operations", fmt.Sprintf(`{"entity":"work_order_operations","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"ORDER_NO":"WO%d","OPERATION_NO":%d,"CONTRACT":"S%d","WORK_CENTER_NO":"WC%d"}}`, o, no, s, (o+no)%centers)})
		}
	}
	// A deterministic shuffle: children often before their parents.
	for i := range events {
		j := (i*7919 + 13) % len(events)
		events[i], events[j] = events[j], events[i]
	}
	for _, e := range events {
		if _, err := w.js.PublishAsync("apismith.cdc."+e.entity, []byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	<-w.js.PublishAsyncComplete()
	logs := &bytes.Buffer{}
	defer func() {
		if t.Failed() {
			t.Logf("still parked:\n%s", w.query(`SELECT p.child_entity, p.child_payload->'data'->>'ORDER_NO', p.parent_entity, p.parent_key::text, p.created_at,
				r.deleted, r.rowversion_ord, r.updated_at, r.created_at FROM bridge.pending_children p
				LEFT JOIN bridge.synced_records r ON r.entity_name = p.parent_entity AND r.bk_hash = p.parent_bk_hash`))
		}
	}()
	eventually(t, w.conn, `SELECT
		(SELECT count(*) FROM schedulehub.sites), (SELECT count(*) FROM schedulehub.work_centers),
		(SELECT count(*) FROM schedulehub.items), (SELECT count(*) FROM schedulehub.work_orders),
		(SELECT count(*) FROM schedulehub.work_order_operations), (SELECT count(*) FROM bridge.pending_children),
		(SELECT count(*) FROM bridge.failed_records)`,
		fmt.Sprintf("%d|%d|%d|%d|%d|0|0", sites, sites*centers, orders, orders, orders*3), logs)
	// Both replicas did part of the work.
	if got := w.query(`SELECT count(DISTINCT replica) FROM bridge.sync_batches WHERE rows_fetched > 0`); got != "2" {
		t.Errorf("replicas that worked: %s", got)
	}
	// Every operation points at the right work center.
	if got := w.query(`SELECT count(*) FROM schedulehub.work_order_operations o JOIN schedulehub.work_centers c USING (contract, work_center_no)`); got != fmt.Sprint(orders*3) {
		t.Errorf("operations with their work center: %s", got)
	}
}

// A target that changes under the running service (here: the table renamed away)
// is the database's failure, not the message's: the consumer holds the batch and
// retries it, nothing is dead-lettered, and once the table is back the event is
// applied.
func TestSchemaDriftHoldsTheBatch(t *testing.T) {
	w := newWorld(t, "SYNCFLOW_CATALOG="+editedCatalog(t, "max_deliver: 3, ack_wait: 1s"))
	logs := service(t, w.env, "--fetch-wait", "50ms", "--heartbeat", "300ms")
	w.publish("sites", siteS1)
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.sites`, "1", logs)
	if _, err := w.conn.Exec(w.ctx, `ALTER TABLE schedulehub.sites RENAME TO sites_moved`); err != nil {
		t.Fatal(err)
	}
	w.publish("sites", `{"entity":"sites","op":"upsert","rowversion":"2026-11-26T09:00:00Z","data":{"CONTRACT":"S1","DESCRIPTION":"renamed plant"}}`)
	waitForLog(t, logs, "batch held: writing it failed; retrying")
	time.Sleep(4 * time.Second) // longer than max_deliver times the ack wait
	if _, err := w.conn.Exec(w.ctx, `ALTER TABLE schedulehub.sites_moved RENAME TO sites`); err != nil {
		t.Fatal(err)
	}
	eventually(t, w.conn, `SELECT description FROM schedulehub.sites`, "renamed plant", logs)
	if got := w.query(`SELECT count(*) FROM bridge.failed_records`); got != "0" {
		t.Errorf("%s dead letters for a failure of the database", got)
	}
}

// A message that crashes the service over and over (here: a process killed while
// it holds the message, three times) is given up by JetStream after max_deliver
// deliveries; SyncFlow dead-letters it from the advisory, and once the cause is
// gone the retry worker applies it.
func TestMaxDeliveriesBecomeDeadLetters(t *testing.T) {
	w := newWorld(t, "SYNCFLOW_CATALOG="+editedCatalog(t, "max_deliver: 3, ack_wait: 1s"))
	args := []string{"run", "--http-addr", "127.0.0.1:0", "--fetch-wait", "50ms", "--retry-first", "200ms", "--dead-letter-interval", "100ms"}
	w.publish("sites", siteS1)
	// Every write of a site fails, in a way SyncFlow cannot blame on the row.
	if _, err := w.conn.Exec(w.ctx, `
		CREATE FUNCTION schedulehub.broken() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'the target is broken' USING ERRCODE = 'XX000'; END $$;
		CREATE TRIGGER broken BEFORE INSERT OR UPDATE ON schedulehub.sites FOR EACH ROW EXECUTE FUNCTION schedulehub.broken()`); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		var logs syncBuffer
		cmd := exec.Command(binary, args...)
		cmd.Env = append(os.Environ(), w.env...)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitForLog(t, &logs, "batch held: writing it failed; retrying")
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	if _, err := w.conn.Exec(w.ctx, `DROP TRIGGER broken ON schedulehub.sites`); err != nil {
		t.Fatal(err)
	}
	logs := service(t, w.env, args[1:]...)
	eventually(t, w.conn, `SELECT description FROM schedulehub.sites`, "Main plant", logs)
	eventually(t, w.conn, `SELECT entity_name, stage_failed, stream_seq, resolution_note FROM bridge.failed_records`, "sites|max_deliver|1|retried: inserted", logs)
	if got := w.query(`SELECT error_message FROM bridge.failed_records`); !strings.Contains(got, "after 3 attempts") {
		t.Errorf("error: %s", got)
	}
}

// waitForLog waits until logs hold text.
func waitForLog(t *testing.T, logs fmt.Stringer, text string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the logs:\n%s", text, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer a process may write while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestParkedReleaseAndExpireByHand(t *testing.T) {
	w := newWorld(t)
	logs, stop := stoppable(t, w.env, "--fetch-wait", "50ms", "--park-first-retry", "10m")
	w.publish("work_orders", workOrder("WO1", "P1"))
	w.publish("work_orders", workOrder("WO2", "P2"))
	eventually(t, w.conn, `SELECT count(*) FROM bridge.pending_children`, "2", logs)
	uid1 := w.query(`SELECT p.uid::text FROM bridge.pending_children p WHERE p.child_payload->'data'->>'ORDER_NO' = 'WO1'`)
	// The service stops first: the re-check that follows the parking commit runs
	// beside the ack, and would release WO1 itself should the parents below land
	// before it ran. A clean stop waits for it.
	stop()
	// The parents arrive by hand, past SyncFlow: only a re-check releases WO1.
	if _, err := w.conn.Exec(w.ctx, `INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq)
		VALUES ('sites', encode(sha256('2:S1'::bytea), 'hex'), '["S1"]', 'x', 1, 'realtime', 1),
		       ('items', encode(sha256('2:P1'::bytea), 'hex'), '["P1"]', 'x', 1, 'realtime', 1)
		ON CONFLICT (entity_name, bk_hash) DO UPDATE SET deleted = false, rowversion = 'x', rowversion_ord = 1`); err != nil {
		t.Fatal(err)
	}
	out, code := w.cli("parked", "release", uid1)
	if code != 0 || !strings.Contains(out, "1 released") {
		t.Fatalf("parked release (%d): %s", code, out)
	}
	if got := w.query(`SELECT order_no FROM schedulehub.work_orders`); got != "WO1" {
		t.Errorf("released: %s", got)
	}
	if out, code := w.cli("parked", "release", uid1); code != 3 {
		t.Errorf("releasing a UID no longer parked (%d): %s", code, out)
	}
	out, code = w.cli("parked", "expire", "--all")
	if code != 0 || !strings.Contains(out, "1 expired to dead letters") {
		t.Fatalf("parked expire (%d): %s", code, out)
	}
	if got := w.query(`SELECT entity_name, stage_failed FROM bridge.failed_records`); got != "work_orders|orphan" {
		t.Errorf("expired: %s", got)
	}
	if out, code := w.cli("parked", "expire"); code != 2 {
		t.Errorf("expire without a selection (%d): %s", code, out)
	}
}

func TestMigrateAndPruneCommands(t *testing.T) {
	ctx := context.Background()
	db, drop, err := testenv.NewDatabase(ctx, "e2e_migrate")
	if err != nil {
		t.Fatal(err)
	}
	defer drop()
	env := []string{"SYNCFLOW_DATABASE_URL=" + db.URL}
	run := func(args ...string) (string, int) {
		out, err := syncflow(t, env, args...)
		if exit, ok := err.(*exec.ExitError); ok {
			return out, exit.ExitCode()
		}
		return out, 0
	}
	latest, err := store.Latest()
	if err != nil {
		t.Fatal(err)
	}
	top, below := fmt.Sprintf("schema version: %d", latest), fmt.Sprintf("schema version: %d", latest-1)
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"migrate", "version"}, "schema version: none"},
		{[]string{"migrate", "up"}, top},
		{[]string{"migrate", "up"}, top},
		{[]string{"migrate", "down", "1", "--yes"}, below},
		{[]string{"migrate", "force", fmt.Sprint(latest - 1)}, below},
		{[]string{"migrate", "up"}, top},
		{[]string{"migrate", "down", "--yes"}, "schema version: none"},
		{[]string{"migrate", "up"}, top},
	}
	for _, s := range steps {
		if out, code := run(s.args...); code != 0 || !strings.Contains(out, s.want) {
			t.Fatalf("%v (%d): %s", s.args, code, out)
		}
	}
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, started_at, finished_at)
		VALUES (gen_random_uuid(), 'sites', 'realtime', 'completed', now() - interval '100 days', now() - interval '100 days')`); err != nil {
		t.Fatal(err)
	}
	if out, code := run("prune"); code != 2 || !strings.Contains(out, "--older-than 90d") {
		t.Errorf("prune without an age (%d): %s", code, out)
	}
	if out, code := run("prune", "--older-than", "90d", "--dry-run"); code != 0 || !strings.Contains(out, "would remove 0 resolved dead letters and 1 batches") {
		t.Errorf("prune --dry-run (%d): %s", code, out)
	}
	archive := filepath.Join(t.TempDir(), "archive.jsonl")
	if out, code := run("prune", "--older-than", "90d", "--archive", archive); code != 0 || !strings.Contains(out, "removed 0 resolved dead letters and 1 batches") {
		t.Errorf("prune (%d): %s", code, out)
	}
	if data, err := os.ReadFile(archive); err != nil || !strings.Contains(string(data), `"table":"sync_batches"`) {
		t.Errorf("archive: %s %v", data, err)
	}
}
