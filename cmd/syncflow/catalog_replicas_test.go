package main_test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func routingEvent(n int, version string) string {
	return fmt.Sprintf(`{"entity":"routings","op":"upsert","rowversion":"%s","data":{"ROUTING_NO":"R%02d","CONTRACT":"S%d","DESCRIPTION":"routing %d"}}`,
		version, n, 1+n%2, n)
}

// Two replicas; r2's catalog listener loses its connection (the NOTIFY of the
// new version is lost, and r2 reconnects 2s later). r1 puts the new catalog in
// force and makes the unknown-entity dead letters of the new entity due; r2's
// retry worker reads the catalog before its round, and a retry that still
// failed as unknown entity would be made due again: every one resolves.
func TestNewEntityDeadLettersResolveThoughAReplicaMissedTheCatalog(t *testing.T) {
	w, r1, r2 := twoReplicasWithRoutingsTable(t, []string{"--stray-interval", "300ms"}, []string{"--stray-interval", "1m", "--dead-letter-interval", "200ms"})
	for n := 1; n <= 10; n++ {
		w.publish("routings", routingEvent(n, "2026-11-27T08:00:00Z"))
	}
	eventually(t, w.conn, `SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL AND stage_failed = 'decode' AND entity_name = 'routings'`, "10", r1)

	// r2's catalog listener connection drops.
	out := w.query(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'adv_r2' AND query = 'LISTEN "bridge_catalog"'`)
	t.Logf("terminated r2's catalog listener: %s", out)
	if out, code := w.cli("catalog", "apply", builtInWith(t, routingsEntity)); code != 0 {
		t.Fatalf("catalog apply (%d): %s", code, out)
	}
	if out, code := w.cli("streams", "apply"); code != 0 {
		t.Fatalf("streams apply (%d): %s", code, out)
	}
	// The entity's own consumer reads the subject from the beginning: the rows arrive.
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.routings`, "10", r1)
	// Several periodic looks later...
	time.Sleep(5 * time.Second)
	got := w.query(`SELECT count(*) FILTER (WHERE resolved_at IS NULL), count(*) FILTER (WHERE resolved_at IS NULL AND retry_count = 1 AND next_retry_at IS NULL)
		FROM bridge.failed_records WHERE entity_name = 'routings'`)
	t.Logf("routings dead letters: unresolved|stranded (retry_count=1, next_retry_at NULL) = %s", got)
	t.Logf("r2 says: %v", strings.Contains(r2.String(), "retried dead letters"))
	for _, l := range strings.Split(r2.String(), "\n") {
		if strings.Contains(l, "retried dead letters") || strings.Contains(l, "listener lost") || strings.Contains(l, "catalog version in force") {
			t.Log("r2: " + l)
		}
	}
	if !strings.HasPrefix(got, "0|") {
		t.Errorf("dead letters of the new entity stay unresolved for ever: %s", got)
	}
}

// Remove an entity (no prune), re-add it (its old durable still exists), then
// remove it again with `streams apply --prune`. The stray consumer the first
// removal created survived the re-add; it must not read again what the entity
// applied while it was back: nothing of that history is dead-lettered.
func TestReAddedEntityHistoryIsNotDeadLetteredAgain(t *testing.T) {
	w := newWorld(t)
	r1 := service(t, w.env, "--replica", "r1", "--fetch-wait", "50ms", "--stray-interval", "300ms", "--mapping-resync", "1s",
		"--dead-letter-interval", "200ms")
	waitForLog(t, r1, "syncflow running")
	w.publish("sites", siteS1)
	w.publish("sites", strings.ReplaceAll(siteS1, "S1", "S2"))
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.sites`, "2", r1)
	if _, err := w.conn.Exec(w.ctx, routingsTable); err != nil {
		t.Fatal(err)
	}
	with := builtInWith(t, routingsEntity)
	without := builtInWith(t, "\n# routings removed\n")
	mustCLI := func(args ...string) string {
		t.Helper()
		out, code := w.cli(args...)
		if code != 0 {
			t.Fatalf("%v (%d): %s", args, code, out)
		}
		return out
	}
	mustCLI("catalog", "apply", with)
	mustCLI("streams", "apply")
	for n := 1; n <= 5; n++ {
		w.publish("routings", routingEvent(n, "2026-11-27T08:00:00Z"))
	}
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.routings`, "5", r1)

	// Removed (no prune yet): a new event is a stray, dead-lettered.
	mustCLI("catalog", "apply", without)
	waitForLog(t, r1, "entity left the catalog: stopping its consumer")
	w.publish("routings", routingEvent(6, "2026-11-27T08:00:00Z"))
	eventually(t, w.conn, `SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL AND entity_name = 'routings'`, "1", r1)

	// Re-added: streams apply first (the stored catalog does not have it yet),
	// then catalog apply. The old durable is still there: the replica consumes it.
	mustCLI("streams", "apply")
	mustCLI("catalog", "apply", with)
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.routings`, "6", r1)
	eventually(t, w.conn, `SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL`, "0", r1)
	for n := 7; n <= 15; n++ {
		w.publish("routings", routingEvent(n, "2026-11-27T09:00:00Z"))
	}
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.routings`, "15", r1)
	t.Logf("consumers while re-added: %s", consumerNames(t, w.js, "APISMITH_CDC"))

	// Removed again, and pruned as the README says.
	mustCLI("catalog", "apply", builtInWith(t, "\n# routings removed again\n"))
	time.Sleep(2 * time.Second)
	t.Log(mustCLI("streams", "apply", "--prune"))
	time.Sleep(3 * time.Second)
	got := w.query(`SELECT count(*), coalesce(string_agg(stream_seq::text, ',' ORDER BY stream_seq), '') FROM bridge.failed_records WHERE resolved_at IS NULL AND entity_name = 'routings'`)
	t.Logf("unresolved routings dead letters after the second removal: %s", got)
	if !strings.HasPrefix(got, "0|") {
		t.Errorf("events the re-added entity applied were dead-lettered as unknown: %s", got)
	}
}

// Two replicas read the catalog at different moments. r1 puts the removal in
// force and its stray finder creates the subject's stray consumer at the
// entity's ack floor; r2 (its catalog NOTIFY lost) still consumes the entity for
// a moment. What r2 applies in that moment is not dead-lettered.
func TestWhatALaggingReplicaAppliesIsNotDeadLettered(t *testing.T) {
	w, r1, r2 := twoReplicasWithRoutingsTable(t, []string{"--stray-interval", "200ms"}, []string{"--stray-interval", "1m"})
	if out, code := w.cli("catalog", "apply", builtInWith(t, routingsEntity)); code != 0 {
		t.Fatal(out)
	}
	w.cli("streams", "apply")
	waitForLog(t, r1, "entity joined the catalog")
	waitForLog(t, r2, "entity joined the catalog")
	for n := 1; n <= 4; n++ {
		w.publish("routings", routingEvent(n, "2026-11-27T08:00:00Z"))
	}
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.routings`, "4", r1)

	w.query(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'adv_r2' AND query = 'LISTEN "bridge_catalog"'`)
	if out, code := w.cli("catalog", "apply", builtInWith(t, "\n# without routings\n")); code != 0 {
		t.Fatal(out)
	}
	waitForLog(t, r1, "entity left the catalog: stopping its consumer")
	time.Sleep(400 * time.Millisecond) // r1's stray finder creates the stray consumer at the ack floor
	for n := 5; n <= 12; n++ {
		w.publish("routings", routingEvent(n, "2026-11-27T09:00:00Z"))
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(4 * time.Second)
	got := w.query(`SELECT string_agg(f.stream_seq::text, ',' ORDER BY f.stream_seq) FROM bridge.failed_records f
		JOIN bridge.synced_records s ON s.entity_name = 'routings' AND s.stream_seq = f.stream_seq
		WHERE f.entity_name = 'routings' AND f.resolved_at IS NULL`)
	t.Logf("applied by r2 AND dead-lettered as unknown (stream seqs): %s", got)
	t.Logf("rows: %s; unresolved dead letters: %s", w.query(`SELECT count(*) FROM schedulehub.routings`),
		w.query(`SELECT count(*) FROM bridge.failed_records WHERE entity_name='routings' AND resolved_at IS NULL`))
	if got != "<nil>" {
		t.Errorf("messages both applied and dead-lettered as unknown: %s", got)
	}
}

// An entity added with catalog apply but without streams apply has no durable
// consumer: its events are read by nobody, so status says so (and the service's
// /readyz, its gauge and alert; see the service tests).
func TestStatusNamesAnEntityWithoutItsConsumer(t *testing.T) {
	w := newWorld(t)
	if _, err := w.conn.Exec(w.ctx, routingsTable); err != nil {
		t.Fatal(err)
	}
	if out, code := w.cli("catalog", "apply", builtInWith(t, routingsEntity)); code != 0 {
		t.Fatal(out)
	}
	out, code := w.cli("status")
	if code != 0 || !strings.Contains(out, "NO CONSUMER") || !strings.Contains(out, "no durable consumer for routings: their events are read by nobody; run `syncflow streams apply`") {
		t.Errorf("status of an entity without its consumer (%d):\n%s", code, out)
	}
	if out, code := w.cli("streams", "apply"); code != 0 {
		t.Fatal(out)
	}
	if out, _ := w.cli("status"); strings.Contains(out, "NO CONSUMER") {
		t.Errorf("status after streams apply:\n%s", out)
	}
}

// twoReplicasWithRoutingsTable starts replicas r1 and r2 (r2 on connections of
// its own name, so that a test can drop them) with extra flags each, waits until
// they apply two sites, and creates the target table of the routings entity the
// catalog does not have yet.
func twoReplicasWithRoutingsTable(t *testing.T, r1Flags, r2Flags []string) (w *world, r1, r2 *bytes.Buffer) {
	t.Helper()
	w = newWorld(t)
	common := []string{"--fetch-wait", "50ms", "--mapping-resync", "1s"}
	logs1 := service(t, w.env, slices.Concat([]string{"--replica", "r1"}, r1Flags, common)...)
	env2 := append(slices.Clone(w.env), "SYNCFLOW_DATABASE_URL="+w.db+"&application_name=adv_r2")
	logs2 := service(t, env2, slices.Concat([]string{"--replica", "r2"}, r2Flags, common)...)
	waitForLog(t, logs1, "syncflow running")
	waitForLog(t, logs2, "syncflow running")
	w.publish("sites", siteS1)
	w.publish("sites", strings.ReplaceAll(siteS1, "S1", "S2"))
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.sites`, "2", logs1)
	if _, err := w.conn.Exec(w.ctx, routingsTable); err != nil {
		t.Fatal(err)
	}
	return w, logs1, logs2
}
