package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syncflow/syncflow/internal/testenv"
)

// The README's nats CLI workflow, step by step, with the real CLI.
func TestNatsCLIWorkflow(t *testing.T) {
	cli := testenv.NatsCLI(t)
	w := newWorld(t)
	logs := service(t, w.env, "--fetch-wait", "100ms")
	nats := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(cli, append([]string{"--server", w.nats}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("nats %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	// 1. Publish one event.
	nats("pub", "apismith.cdc.sites", siteS1)
	eventually(t, w.conn, `SELECT contract, description FROM schedulehub.sites`, "S1|Main plant", logs)

	// 2. Publish a file of events, one per line with its message id: a duplicate id
	// is dropped by JetStream.
	dir := t.TempDir()
	var lines []string
	for i := range 5 {
		lines = append(lines, fmt.Sprintf("items:P%d:20261126080000\t%s", i, item(fmt.Sprintf("P%d", i))))
	}
	lines = append(lines, lines[0]) // published twice
	file := filepath.Join(dir, "items.tsv")
	os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	script := `while IFS=$'\t' read -r id event; do "$NATS" --server "$SERVER" pub -J -H "Nats-Msg-Id:$id" apismith.cdc.items "$event"; done < "$FILE"`
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "NATS="+cli, "SERVER="+w.nats, "FILE="+file)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Count(string(out), "Duplicate: true") != 1 {
		t.Fatalf("publishing the file: %v\n%s", err, out)
	}
	eventually(t, w.conn, `SELECT count(*) FROM schedulehub.items`, "5", logs)

	// 3. Inspect the stream.
	var info struct {
		State struct {
			Msgs     uint64 `json:"messages"`
			Subjects int    `json:"num_subjects"`
		} `json:"state"`
	}
	if err := json.Unmarshal([]byte(nats("stream", "info", "APISMITH_CDC", "-j")), &info); err != nil || info.State.Msgs != 6 {
		t.Fatalf("stream info: %+v %v", info, err)
	}
	var msg struct {
		Subject string `json:"subject"`
		Data    []byte `json:"data"`
	}
	if err := json.Unmarshal([]byte(nats("stream", "get", "APISMITH_CDC", "2", "-j")), &msg); err != nil ||
		msg.Subject != "apismith.cdc.items" || !strings.Contains(string(msg.Data), `"PART_NO":"P0"`) {
		t.Fatalf("stream get: %+v %v", msg, err)
	}

	// 4. Replay the last hour into SyncFlow after a mapping change: the change applies.
	rules := filepath.Join(dir, "rules.csv")
	os.WriteFile(rules, []byte("entity_name,source_field,target_field,transformation,default_value,is_required\nitems,PART_STATUS,part_status,lowercase,planned,false\n"), 0o644)
	if out, code := w.cli("mappings", "import", rules); code != 0 {
		t.Fatal(out)
	}
	if out, code := w.cli("replay", "--entity", "items", "--since", "1h"); code != 0 || !strings.Contains(out, "replayed 5 items events") || !strings.Contains(out, "5 updated") {
		t.Fatalf("replay (%d): %s", code, out)
	}
	if got := w.query(`SELECT count(*) FROM schedulehub.items WHERE part_status = 'planned'`); got != "5" {
		t.Errorf("items after the replay: %s", got)
	}

	// 5. See the effect with syncflow status.
	out2, code := w.cli("status", "--json")
	if code != 0 {
		t.Fatal(out2)
	}
	var status struct {
		Entities []struct {
			Entity    string `json:"entity"`
			LastBatch struct {
				Replica string `json:"replica"`
				Updated int    `json:"rows_updated"`
			} `json:"last_batch"`
			Checkpoints []struct {
				RowVersion string `json:"last_sync_rowversion"`
			} `json:"checkpoints"`
			Lag map[string]struct {
				Pending uint64 `json:"pending"`
			} `json:"lag"`
		} `json:"entities"`
	}
	if err := json.Unmarshal([]byte(out2), &status); err != nil {
		t.Fatalf("%v\n%s", err, out2)
	}
	found := false
	for _, e := range status.Entities {
		if e.Entity == "items" {
			found = true
			if e.LastBatch.Replica != "replay" || e.LastBatch.Updated != 5 || len(e.Checkpoints) != 1 || e.Checkpoints[0].RowVersion != "2026-11-26T08:00:00Z" {
				t.Errorf("status of items: %+v", e)
			}
			if _, ok := e.Lag["APISMITH_CDC"]; !ok {
				t.Errorf("status has no lag for items: %+v", e.Lag)
			}
		}
	}
	if !found {
		t.Errorf("status has no items:\n%s", out2)
	}
	table, code := w.cli("status")
	if code != 0 || !strings.Contains(table, "items") || !strings.Contains(table, "2026-11-26T08:00:00Z") {
		t.Errorf("status (%d):\n%s", code, table)
	}
}
