package main_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/sim"
	"github.com/syncflow/syncflow/internal/testenv"
)

// verifyOutput is what `syncflow verify --json` prints.
type verifyOutput struct {
	InSync   bool `json:"in_sync"`
	Entities []struct {
		Entity     string              `json:"entity"`
		SourceRows int64               `json:"source_rows"`
		Counts     map[string]int64    `json:"counts"`
		Samples    map[string][]string `json:"samples"`
		InSync     bool                `json:"in_sync"`
	} `json:"entities"`
}

func parseVerify(t *testing.T, out string) verifyOutput {
	t.Helper()
	var v verifyOutput
	i := strings.Index(out, "{")
	if i < 0 {
		t.Fatalf("no JSON in:\n%s", out)
	}
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&v); err != nil {
		t.Fatalf("%v in:\n%s", err, out)
	}
	return v
}

// `syncflow verify` as an operator runs it: in sync (exit 0), drift injected
// in the ERP and in ScheduleHub without events (exit 4, exact counts), a dry
// run that publishes nothing, a repair through the running service, and in
// sync again; typos are usage errors; the source down is an error that says so,
// recorded, and shown by status, with no secret in any output.
func TestVerifyCommand(t *testing.T) {
	const token = "verify-s3cret-token"
	erp := sim.New(sim.Config{Items: 300})
	src := httptest.NewServer(erp.Handler(sim.ServerConfig{Token: token}))
	defer src.Close()
	w := newWorld(t, "SYNCFLOW_APISMITH_URL="+src.URL, "SYNCFLOW_APISMITH_TOKEN="+token)
	logs := service(t, w.env, "--fetch-wait", "50ms")
	now := time.Now().UTC()
	window := now.Add(-time.Hour).Format("15:04") + "-" + now.Add(2*time.Hour).Format("15:04")
	w.cli("schedule", "set", "items", "--window", window, "--tz", "UTC", "--days", "1", "--page-size", "100")
	w.cli("schedule", "enable", "items")
	if out, code := w.cli("backfill", "--once"); code != 0 {
		t.Fatalf("backfill (%d): %s", code, out)
	}
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.items`, "300", logs)

	out, code := w.cli("verify", "--entity", "items")
	if code != 0 || !strings.Contains(out, "items   300     300     0        0      0      0              0               0") {
		t.Fatalf("verify of a synced entity (%d):\n%s", code, out)
	}
	if _, err := erp.Drift(sim.DriftConfig{Entity: "items", Create: 2, Change: 3, Delete: 1, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.conn.Exec(w.ctx, `UPDATE schedulehub.items SET description = 'by hand' WHERE part_no IN ('P00000010', 'P00000011')`); err != nil {
		t.Fatal(err)
	}
	if _, err := w.conn.Exec(w.ctx, `DELETE FROM schedulehub.items WHERE part_no = 'P00000012'`); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"missing": 2, "stale": 3, "extra": 1, "target-edited": 2, "target-missing": 1, "unhashed": 0, "unreadable": 0}
	out, code = w.cli("verify", "--entity", "items", "--json", "--settle", "100ms")
	v := parseVerify(t, out)
	if code != 4 || v.InSync || len(v.Entities) != 1 || fmt.Sprint(v.Entities[0].Counts) != fmt.Sprint(want) {
		t.Fatalf("verify after the drift (%d): %+v\n%s", code, v, out)
	}
	if got := v.Entities[0].Samples["target-edited"]; fmt.Sprint(got) != "[P00000010 P00000011]" {
		t.Errorf("samples of target-edited: %v", got)
	}

	stream, err := w.js.Stream(w.ctx, event.Backfill.Stream)
	if err != nil {
		t.Fatal(err)
	}
	messages := func() uint64 {
		info, err := stream.Info(w.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	before, recorded := messages(), w.query(`SELECT count(*) FROM bridge.verifications`)
	out, code = w.cli("verify", "--entity", "items", "--repair", "--dry-run")
	if code != 4 || !strings.Contains(out, "would publish 2 missing, 3 stale, 2 target-edited, 1 target-missing, 1 extra reported, not deleted") ||
		!strings.Contains(out, "dry run: nothing was published") || !strings.Contains(out, "run `syncflow verify --entity items --repair` to publish") {
		t.Fatalf("dry run (%d):\n%s", code, out)
	}
	if messages() != before || w.query(`SELECT count(*) FROM bridge.verifications`) != recorded {
		t.Fatal("the dry run published or recorded something")
	}
	out, code = w.cli("verify", "--entity", "items", "--repair", "--delete-extra")
	if code != 4 || !strings.Contains(out, "published 9 rows to repair") {
		t.Fatalf("repair (%d):\n%s", code, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, code = w.cli("verify", "--entity", "items", "--settle", "0")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still drifted after the repair (%d):\n%s\n%s", code, out, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := w.query(`SELECT description FROM schedulehub.items WHERE part_no = 'P00000010'`); got != "items 10 rev 1" {
		t.Errorf("a repaired target row holds %q", got)
	}
	for _, args := range [][]string{{"status"}, {"status", "--wide"}} {
		if out, _ := w.cli(args...); !strings.Contains(out, "VERIFIED") || !strings.Contains(out, "ok 0s ago") {
			t.Errorf("%v does not show the verification:\n%s", args, out)
		}
	}

	for _, bad := range [][]string{
		{"verify", "--dry-run"},
		{"verify", "--delete-extra"},
		{"verify", "--page-size", "0"},
		{"verify", "--samples", "-1"},
		{"verify", "--apismith-url", "ftp://x"},
	} {
		if out, code := w.cli(bad...); code != 2 {
			t.Errorf("%v (%d): %s", bad, code, out)
		}
	}
	if out, code := w.cli("verify", "--entity", "itemz"); code != 3 || !strings.Contains(out, `entity "itemz" is not in the catalog`) {
		t.Errorf("unknown entity (%d): %s", code, out)
	}

	// The source down: an error that says what it waited for, kept as a failed
	// verification and shown by status.
	out, code = w.cli("verify", "--entity", "items", "--apismith-url", "http://127.0.0.1:1", "--apismith-retry-for", "1s")
	if code != 1 || !strings.Contains(out, "waiting for APISmith at http://127.0.0.1:1/api/v1/entities/items/count") || !strings.Contains(out, "giving up") {
		t.Fatalf("source down (%d):\n%s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.verifications WHERE error LIKE '%giving up%'`); got != "1" {
		t.Errorf("failed verifications recorded: %s", got)
	}
	if out, _ := w.cli("status"); !strings.Contains(out, "failed 0s ago") {
		t.Errorf("status does not show the failed verification:\n%s", out)
	}
	// A password in the source's URL is printed and kept by nobody.
	const pw = "url-pa55word"
	out, code = w.cli("verify", "--entity", "items", "--apismith-url", "http://ops:"+pw+"@127.0.0.1:1", "--apismith-retry-for", "1s")
	if code != 1 || strings.Contains(out, pw) || !strings.Contains(out, "http://ops:xxxxx@127.0.0.1:1/api/v1/entities/items/count") {
		t.Errorf("a password in the URL (%d):\n%s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM bridge.verifications WHERE error LIKE '%` + pw + `%'`); got != "0" {
		t.Errorf("%s verifications keep the password", got)
	}
	// A wrong token: the answer says so; no token is printed.
	out, code = w.cli("verify", "--entity", "items", "--apismith-token", "wrong-"+token)
	if code != 1 || !strings.Contains(out, "HTTP 401") {
		t.Errorf("wrong token (%d): %s", code, out)
	}
	if strings.Contains(out, token) {
		t.Errorf("a token leaked:\n%s", out)
	}
}

// SyncFlow holds one page of keys whatever the entity's size: `syncflow verify`
// of 400,000 items (the keys alone, held at once, would take over 80 MiB) stays
// under 64 MiB of peak RSS (the process's VmHWM, read while it runs).
func TestVerifyMemoryStaysBounded(t *testing.T) {
	const n = 400_000
	erp := sim.New(sim.Config{Items: n})
	src := httptest.NewServer(erp.Handler(sim.ServerConfig{}))
	defer src.Close()
	w := newWorld(t, "SYNCFLOW_APISMITH_URL="+src.URL)
	if err := testenv.LoadSyncedItems(w.ctx, w.conn, n); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "verify", "--entity", "items", "--settle", "0")
	cmd.Env = append(os.Environ(), w.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	peak, err := testenv.RunPeakRSS(cmd)
	if err != nil || !strings.Contains(out.String(), fmt.Sprintf("items   %d  %d  0        0      0      0              0               0", n, n)) {
		t.Fatalf("verify of %d synced items: %v\n%s", n, err, out.String())
	}
	rss := peak / 1024
	t.Logf("peak RSS of syncflow verify over %d items: %d MiB", n, rss)
	if rss > 64 {
		t.Fatalf("peak RSS %d MiB verifying %d items", rss, n)
	}
}
