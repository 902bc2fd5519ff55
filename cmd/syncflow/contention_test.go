package main_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// Two replicas on the same consumers, contending for the same keys: every key
// gets several versions from both streams, with deletes, rowversions that tie
// within and across the streams, in a shuffled order, and the replicas are
// killed (SIGKILL) and restarted while they work. The final target and ledger
// are the ones the version order gives (the greatest rowversion; on a tie,
// realtime over backfill; within a stream, the later sequence), and nothing is
// dead-lettered.
func TestTwoReplicasContendedKeysWithKills(t *testing.T) {
	contendedKeysWithKills(t)
}

// The same, with every batch of two keys or more split into up to four lanes
// written side by side (--lanes 4 --lane-min 1): every version of a key in one
// lane, lanes of different replicas on the same keys.
func TestTwoReplicasInLanesContendedKeysWithKills(t *testing.T) {
	contendedKeysWithKills(t, "--lanes", "4", "--lane-min", "1")
}

func contendedKeysWithKills(t *testing.T, extraArgs ...string) {
	w := newWorld(t, "SYNCFLOW_CATALOG="+shortAckWait(t, 2*time.Second))
	type ev struct {
		key, op, desc string
		ord           int
		backfill      bool
		seq           uint64 // set when published
	}
	const keys = 60
	var events []ev
	for k := range keys {
		key := fmt.Sprintf("K%02d", k)
		for v := 1; v <= 6; v++ {
			op := "upsert"
			if v == 3 || (v == 6 && k%3 == 0) {
				op = "delete"
			}
			ord := v
			if v == 6 {
				ord = 5 // IFS does not bump the rowversion on a delete: a tie with v5
			}
			events = append(events, ev{key: key, op: op, desc: fmt.Sprintf("r%d", v), ord: ord})
		}
		events = append(events, ev{key: key, op: "upsert", desc: "b5", ord: 5, backfill: true}) // ties the realtime v5/v6
		events = append(events, ev{key: key, op: "upsert", desc: "b4", ord: 4, backfill: true})
		if k%5 == 0 {
			events = append(events, ev{key: key, op: "upsert", desc: "b7", ord: 7, backfill: true}) // newer than anything realtime
		}
	}
	rng := rand.New(rand.NewPCG(7, 11))
	rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })

	args := append([]string{"run", "--http-addr", "127.0.0.1:0", "--fetch-wait", "50ms", "--batch-size", "10", "--heartbeat", "500ms"}, extraArgs...)
	start := func(replica string) *exec.Cmd {
		cmd := exec.Command(binary, append(args, "--replica", replica)...)
		cmd.Env = append(os.Environ(), w.env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	kill := func(cmd *exec.Cmd) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	// working waits until replica has written something, so that a kill lands
	// while it works.
	working := func(replica string) {
		deadline := time.Now().Add(20 * time.Second)
		for w.query(`SELECT count(*) > 0 FROM bridge.sync_batches WHERE replica = '`+replica+`' AND status = 'running' AND rows_fetched > 0`) != "true" {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s wrote nothing", replica)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	r1, r2 := start("r1"), start("r2")
	for i := range events {
		e := &events[i]
		subject := "apismith.cdc.sites"
		if e.backfill {
			subject = "apismith.backfill.sites"
		}
		body := fmt.Sprintf(`{"entity":"sites","op":%q,"rowversion":"2026-01-01T00:00:%02dZ","data":{"CONTRACT":%q,"DESCRIPTION":%q}}`, e.op, e.ord, e.key, e.desc)
		ack, err := w.js.Publish(w.ctx, subject, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		e.seq = ack.Sequence
		switch i {
		case len(events) / 4:
			working("r1")
			kill(r1)
			r1 = start("r1")
		case len(events) / 2:
			working("r2")
			kill(r2)
			r2 = start("r2")
		case 3 * len(events) / 4:
			working("r1")
			kill(r1)
			r1 = start("r1")
		}
		if i%20 == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	defer kill(r1)
	defer kill(r2)

	// The model: per key, the greatest event in the version order.
	winner := map[string]ev{}
	greater := func(a, b ev) bool {
		switch {
		case a.ord != b.ord:
			return a.ord > b.ord
		case a.backfill != b.backfill:
			return !a.backfill
		default:
			return a.seq > b.seq
		}
	}
	for _, e := range events {
		if w0, ok := winner[e.key]; !ok || greater(e, w0) {
			winner[e.key] = e
		}
	}
	var wantTarget, wantLedger []string
	for _, k := range slices.Sorted(maps.Keys(winner)) {
		e := winner[k]
		if e.op == "upsert" {
			wantTarget = append(wantTarget, k+"|"+e.desc)
		}
		src := "realtime"
		if e.backfill {
			src = "backfill"
		}
		wantLedger = append(wantLedger, fmt.Sprintf("%s|%s|%d|%v", k, src, e.seq, e.op == "delete"))
	}
	eventually(t, w.conn, `SELECT contract, description FROM schedulehub.sites ORDER BY 1`, strings.Join(wantTarget, "\n"), nil)
	eventually(t, w.conn, `SELECT business_key->>0, source_stream, stream_seq, deleted FROM bridge.synced_records ORDER BY 1`, strings.Join(wantLedger, "\n"), nil)
	if got := w.query(`SELECT count(*) FROM bridge.failed_records`); got != "0" {
		t.Errorf("%s dead letters:\n%s", got, w.query(`SELECT stage_failed, error_message FROM bridge.failed_records`))
	}
	if got := w.query(`SELECT count(DISTINCT replica) FROM bridge.sync_batches WHERE rows_fetched > 0`); got != "2" {
		t.Errorf("replicas that worked: %s", got)
	}
	// The kills came while the replicas worked: their restarts closed batches the
	// killed processes had left running.
	if got := w.query(`SELECT count(*) > 0 FROM bridge.sync_batches WHERE status = 'failed' AND error_message LIKE 'the replica stopped without closing%'`); got != "true" {
		t.Errorf("no kill interrupted a replica at work; the test did not test it")
	}
}
