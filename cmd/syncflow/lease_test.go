package main_test

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/syncflow/syncflow/internal/testenv"
)

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// A second `syncflow run` under a live replica name refuses to start, naming the
// holder, and the live process's running batches stay running.
func TestOneProcessPerReplicaName(t *testing.T) {
	w := newWorld(t)
	logs := service(t, w.env, "--fetch-wait", "100ms", "--replica", "r1")
	w.publish("sites", siteS1)
	eventually(t, w.conn, `SELECT replica, status FROM bridge.sync_batches WHERE entity_name = 'sites'`, "r1|running", logs)
	out, code := w.cli("run", "--http-addr", "127.0.0.1:0", "--replica", "r1", "--lease-wait", "200ms")
	if code != 1 || !strings.Contains(out, `replica name "r1" is in use by a running process (syncflow pid=`) ||
		!strings.Contains(out, "replica=r1") || !strings.Contains(out, ", since ") || !strings.Contains(out, "another --replica") {
		t.Errorf("second process (%d):\n%s", code, out)
	}
	if got := w.query(`SELECT replica, status FROM bridge.sync_batches WHERE entity_name = 'sites'`); got != "r1|running" {
		t.Errorf("the second process touched the first one's batches: %s", got)
	}
	// Another name starts alongside. (Waiting for it also keeps the test's end
	// from signalling a process that has not yet reached its signal handler.)
	r2 := service(t, w.env, "--fetch-wait", "100ms", "--replica", "r2")
	waitForLog(t, r2, "syncflow running")
	w.publish("sites", strings.Replace(siteS1, "S1", "S2", 1))
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.sites`, "2", logs)
}

// The HTTP address is taken before anything else: a second process on a busy
// port stops before it migrates, takes a lease or closes anyone's batches.
func TestBusyHTTPAddressStopsBeforeAnyEffect(t *testing.T) {
	w := newWorld(t)
	addr := freePort(t)
	logs := service(t, w.env, "--fetch-wait", "100ms", "--replica", "busy", "--http-addr", addr)
	w.publish("sites", siteS1)
	eventually(t, w.conn, `SELECT status FROM bridge.sync_batches WHERE entity_name = 'sites'`, "running", logs)
	empty, drop, err := testenv.NewDatabase(context.Background(), "e2e_busy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	for _, env := range [][]string{w.env, append(w.env[:len(w.env):len(w.env)], "SYNCFLOW_DATABASE_URL="+empty.URL)} {
		out, err := syncflow(t, env, "run", "--replica", "busy", "--http-addr", addr, "--migrate", "--apply-streams")
		if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 || !strings.Contains(out, "address already in use") {
			t.Errorf("a second process on %s: %v\n%s", addr, err, out)
		}
	}
	if got := w.query(`SELECT status FROM bridge.sync_batches WHERE entity_name = 'sites'`); got != "running" {
		t.Errorf("the live process's batch is %s", got)
	}
	out, _ := syncflow(t, []string{"SYNCFLOW_DATABASE_URL=" + empty.URL}, "migrate", "version")
	if !strings.Contains(out, "schema version: none") {
		t.Errorf("the refused process migrated: %s", out)
	}
}
