package main_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/stream"
)

// SyncFlow runs as a NATS user with exactly the permissions of
// deploy/nats/syncflow-permissions.conf: the admin user applies the streams, the
// syncflow user consumes them, and a publish outside its subjects is refused.
func TestNATSUserWithTheShippedPermissions(t *testing.T) {
	perms, err := os.ReadFile("../../deploy/nats/syncflow-permissions.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.ReplaceAll(string(perms), `"$2a$11$CHANGE.ME.WITH.nats.server.passwd"`, `"s3cret-pw"`)
	// APISmith, publishing the realtime events, is another user of the server.
	conf = strings.Replace(conf, "users = [", "users = [\n    {user: apismith, password: \"apismith-pw\"}", 1)
	dir := t.TempDir()
	confFile := filepath.Join(dir, "server.conf")
	os.WriteFile(confFile, []byte(fmt.Sprintf("listen: \"127.0.0.1:-1\"\njetstream {store_dir: %q}\n%s", filepath.Join(dir, "js"), conf)), 0o600)
	opts, err := server.ProcessConfigFile(confFile)
	if err != nil {
		t.Fatal(err)
	}
	opts.NoLog = true
	srv, err := stream.StartEmbeddedWith(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	w := newWorldOn(t, srv.ClientURL(), "SYNCFLOW_NATS_USER=syncflow-admin", "SYNCFLOW_NATS_PASSWORD=s3cret-pw")

	// No password: refused, with a message that says so.
	if out, code := w.cli("streams", "apply", "--nats-user", "nobody", "--nats-password", "x"); code == 0 || !strings.Contains(out, "Authorization Violation") {
		t.Errorf("a wrong user (%d): %s", code, out)
	}
	env := append(w.env, "SYNCFLOW_NATS_USER=syncflow", "SYNCFLOW_NATS_PASSWORD=s3cret-pw")
	logs := service(t, env, "--fetch-wait", "100ms")
	apismith, err := nats.Connect(srv.ClientURL(), nats.UserInfo("apismith", "apismith-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer apismith.Close()
	js, _ := jetstream.New(apismith)
	if _, err := js.Publish(w.ctx, "apismith.cdc.sites", []byte(siteS1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, w.conn, `SELECT contract FROM schedulehub.sites`, "S1", logs)
	if strings.Contains(logs.String(), "Permissions Violation") {
		t.Errorf("syncflow needed a permission the shipped file does not give:\n%s", logs)
	}
	// The syncflow user may publish backfill rows, and nothing to the realtime subjects.
	user, err := nats.Connect(srv.ClientURL(), nats.UserInfo("syncflow", "s3cret-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close()
	ujs, _ := jetstream.New(user)
	if _, err := ujs.Publish(w.ctx, "apismith.backfill.sites", []byte(siteS1)); err != nil {
		t.Errorf("backfill publish refused: %v", err)
	}
	pctx, cancel := context.WithTimeout(w.ctx, time.Second)
	defer cancel()
	if _, err := ujs.Publish(pctx, "apismith.cdc.sites", []byte(siteS1), jetstream.WithRetryAttempts(0)); err == nil {
		t.Error("the syncflow user published a realtime event")
	}
}
