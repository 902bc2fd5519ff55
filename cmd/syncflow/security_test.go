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
	"github.com/syncflow/syncflow/internal/testenv"
)

// SyncFlow runs as a NATS user with exactly the permissions of
// deploy/nats/syncflow-permissions.conf: the admin user applies the streams, the
// syncflow user consumes them (and drains stray subjects), the ops user replays;
// neither of the last two may change or delete a durable consumer, and a publish
// outside their subjects is refused.
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

	// A subject no catalog entity owns: the syncflow user creates the consumer
	// that drains it.
	if _, err := js.Publish(w.ctx, "apismith.cdc.suppliers", []byte(`{"entity":"suppliers","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"ID":"X"}}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, w.conn, `SELECT entity_name FROM bridge.failed_records`, "suppliers", logs)

	// Neither the runtime user nor the ops user may change or delete a durable
	// consumer, by `streams apply` or by hand.
	ops, err := nats.Connect(srv.ClientURL(), nats.UserInfo("syncflow-ops", "s3cret-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer ops.Close()
	ojs, _ := jetstream.New(ops)
	durable, err := w.js.Consumer(w.ctx, "APISMITH_CDC", "syncflow_cdc_sites")
	if err != nil {
		t.Fatal(err)
	}
	cfg := durable.CachedInfo().Config
	for name, userJS := range map[string]jetstream.JetStream{"syncflow": ujs, "syncflow-ops": ojs} {
		if out, code := w.cli("streams", "apply", "--nats-user", name, "--nats-password", "s3cret-pw"); code != 1 || !strings.Contains(out, "Permissions Violation") {
			t.Errorf("%s ran streams apply (%d): %s", name, code, out)
		}
		ctx, cancel := context.WithTimeout(w.ctx, time.Second)
		changed := cfg
		changed.MaxAckPending = 7
		if _, err := userJS.UpdateConsumer(ctx, "APISMITH_CDC", changed); err == nil {
			t.Errorf("%s changed a durable consumer", name)
		}
		if _, err := userJS.CreateOrUpdateConsumer(ctx, "APISMITH_CDC", changed); err == nil {
			t.Errorf("%s changed a durable consumer with create-or-update", name)
		}
		if err := userJS.DeleteConsumer(ctx, "APISMITH_CDC", "syncflow_cdc_sites"); err == nil {
			t.Errorf("%s deleted a durable consumer", name)
		}
		cancel()
	}
	if info, err := durable.Info(w.ctx); err != nil || info.Config.MaxAckPending != cfg.MaxAckPending {
		t.Errorf("the durable consumer after the attempts: %v %+v", err, info)
	}
	// The ops user replays (a consumer of its own, removed afterwards).
	out, code := w.cli("replay", "--entity", "sites", "--since", "1h", "--nats-user", "syncflow-ops", "--nats-password", "s3cret-pw")
	if code != 0 || !strings.Contains(out, "replayed 1 sites events") {
		t.Errorf("replay as syncflow-ops (%d): %s", code, out)
	}
	if names := consumerNames(t, w.js, "APISMITH_CDC"); strings.Contains(names, "replay") {
		t.Errorf("replay consumer left behind: %s", names)
	}
	if strings.Contains(logs.String(), "Permissions Violation") {
		t.Errorf("syncflow needed a permission the shipped file does not give:\n%s", logs)
	}
}

// The permissions deny every shipped durable consumer by name.
func TestNATSPermissionsDenyEveryDurable(t *testing.T) {
	perms, err := os.ReadFile("../../deploy/nats/syncflow-permissions.conf")
	if err != nil {
		t.Fatal(err)
	}
	_, defs := testenv.Shipped(t)
	var durables []string
	for _, byEntity := range defs.Consumers {
		for _, c := range byEntity {
			durables = append(durables, c.Durable)
		}
	}
	durables = append(durables, defs.AdvisoriesConsumer.Durable)
	for _, d := range durables {
		for _, subject := range []string{"$JS.API.CONSUMER.CREATE.*." + d, "$JS.API.CONSUMER.CREATE.*." + d + ".>", "$JS.API.CONSUMER.DELETE.*." + d} {
			if !strings.Contains(string(perms), `"`+subject+`"`) {
				t.Errorf("deploy/nats/syncflow-permissions.conf does not deny %s", subject)
			}
		}
	}
}
