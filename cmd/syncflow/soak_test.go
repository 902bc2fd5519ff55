package main_test

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/stream"
)

// TestSoak runs two replicas under a steady load of sites and their work
// centers, children first, while one replica is killed (SIGKILL) and restarted
// every minute, PostgreSQL terminates every SyncFlow connection every few
// minutes, and the NATS server is restarted once. At the end the target equals
// the model, nothing is dead-lettered or left parked, and the resident memory of
// the replica that was never killed is reported with its slope.
//
// It runs for two minutes (the chaos compressed: a kill every 30s) unless
// SYNCFLOW_SOAK says longer: `make soak DURATION=30m`. SYNCFLOW_SOAK_RATE sets
// the events per second (2,000).
func TestSoak(t *testing.T) {
	duration := 2 * time.Minute
	if s := os.Getenv("SYNCFLOW_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Minute {
			t.Fatalf("SYNCFLOW_SOAK=%q: give a duration of a minute or more, e.g. 30m", s)
		}
		duration = d
	}
	rate := 2000
	if s := os.Getenv("SYNCFLOW_SOAK_RATE"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("SYNCFLOW_SOAK_RATE=%q: give events per second", s)
		}
		rate = n
	}
	killEvery, terminateEvery := min(time.Minute, duration/4), min(3*time.Minute, duration/3)
	restartAt := duration/2 + 5*time.Second

	// A broker that can be restarted on its port, with its store.
	dir := t.TempDir()
	port := freeTCPPort(t)
	srv, err := stream.StartEmbedded("127.0.0.1", port, dir)
	if err != nil {
		t.Fatal(err)
	}
	var srvMu sync.Mutex
	t.Cleanup(func() {
		srvMu.Lock()
		defer srvMu.Unlock()
		srv.Stop()
	})
	w := newWorldOn(t, fmt.Sprintf("nats://127.0.0.1:%d", port), "SYNCFLOW_CATALOG="+shortAckWait(t, 2*time.Second))

	// The replicas, their logs in files (a long soak logs a lot).
	type replica struct {
		name string
		cmd  *exec.Cmd
		log  *os.File
	}
	start := func(name string) *replica {
		f, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(binary, "run", "--http-addr", "127.0.0.1:0", "--replica", name, "--heartbeat", "500ms")
		cmd.Env = append(os.Environ(), w.env...)
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return &replica{name: name, cmd: cmd, log: f}
	}
	stop := func(r *replica, kill bool) {
		if kill {
			_ = r.cmd.Process.Kill()
		} else {
			_ = r.cmd.Process.Signal(os.Interrupt)
		}
		_ = r.cmd.Wait()
		r.log.Close()
	}
	tail := func(name string) string {
		data, _ := os.ReadFile(filepath.Join(dir, name+".log"))
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		return string(data)
	}
	r1, r2 := start("r1"), start("r2")
	defer func() { stop(r1, false); stop(r2, false) }()

	// The publisher and its model: per key, the last operation published.
	type last struct {
		version int
		deleted bool
	}
	model := map[string]map[string]last{"sites": {}, "work_centers": {}}
	rng := rand.New(rand.NewPCG(2026, 11))
	var sites, centers []string
	n := 0
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	publish := func(entity, key, op string) {
		n++
		rv := base.Add(time.Duration(n) * time.Second).Format(time.RFC3339)
		var body string
		switch entity {
		case "sites":
			body = fmt.Sprintf(`{"entity":"sites","op":%q,"rowversion":%q,"data":{"CONTRACT":%q,"DESCRIPTION":"v%d"}}`, op, rv, key, n)
		default:
			site, wc, _ := strings.Cut(key, "/")
			body = fmt.Sprintf(`{"entity":"work_centers","op":%q,"rowversion":%q,"data":{"CONTRACT":%q,"WORK_CENTER_NO":%q,"DESCRIPTION":"v%d"}}`, op, rv, site, wc, n)
		}
		// Until the broker has it: across its restart, the message id makes a
		// publish whose answer was lost count once.
		id := "soak-" + strconv.Itoa(n)
		for {
			if _, err := w.js.Publish(w.ctx, "apismith.cdc."+entity, []byte(body), jetstream.WithMsgID(id)); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		model[entity][key] = last{version: n, deleted: op == "delete"}
	}
	next := func() {
		switch x := rng.Float64(); {
		case x < 0.02 || len(sites) == 0:
			// A new site, introduced by its work centers: children first.
			site := fmt.Sprintf("S%05d", len(sites))
			for i := range 2 {
				wc := fmt.Sprintf("%s/W%d", site, i)
				publish("work_centers", wc, "upsert")
				centers = append(centers, wc)
			}
			publish("sites", site, "upsert")
			sites = append(sites, site)
		case x < 0.25:
			publish("sites", sites[rng.IntN(len(sites))], "upsert")
		case x < 0.28:
			publish("work_centers", centers[rng.IntN(len(centers))], "delete")
		default:
			publish("work_centers", centers[rng.IntN(len(centers))], "upsert")
		}
	}

	// Resident memory of r1, never killed.
	type sample struct {
		at  time.Duration
		rss float64 // MiB
	}
	var samples []sample
	began := time.Now()
	nextKill, nextTerminate, restarted := killEvery, terminateEvery, false
	kills, terminations := 0, 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	lastSample := time.Duration(0)
	for {
		now := <-tick.C
		el := now.Sub(began)
		if el >= duration {
			break
		}
		for due := int(el.Seconds() * float64(rate)); n < due; {
			next()
		}
		switch {
		case el >= nextKill:
			stop(r2, true)
			r2 = start("r2")
			kills++
			nextKill += killEvery
		case el >= nextTerminate:
			w.query(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid()`)
			terminations++
			nextTerminate += terminateEvery
		case el >= restartAt && !restarted:
			srvMu.Lock()
			srv.Stop()
			time.Sleep(2 * time.Second)
			if srv, err = stream.StartEmbedded("127.0.0.1", port, dir); err != nil {
				srvMu.Unlock()
				t.Fatalf("restarting NATS: %v", err)
			}
			srvMu.Unlock()
			restarted = true
		}
		if el-lastSample >= 2*time.Second {
			if rss, ok := residentMiB(r1.cmd.Process.Pid); ok {
				samples = append(samples, sample{el, rss})
			}
			lastSample = el
		}
	}
	published := n
	t.Logf("published %d events in %s (%d sites, %d work centers); %d kills, %d connection terminations, NATS restarted: %v",
		published, duration, len(sites), len(centers), kills, terminations, restarted)

	// The target converges on the model.
	want := func(entity string) string {
		var lines []string
		for _, k := range slices.Sorted(maps.Keys(model[entity])) {
			if l := model[entity][k]; !l.deleted {
				lines = append(lines, fmt.Sprintf("%s|v%d", k, l.version))
			}
		}
		return strings.Join(lines, "\n")
	}
	queries := map[string]string{
		"sites":        `SELECT contract || '|' || description FROM schedulehub.sites ORDER BY contract`,
		"work_centers": `SELECT contract || '/' || work_center_no || '|' || description FROM schedulehub.work_centers ORDER BY contract, work_center_no`,
	}
	deadline := time.Now().Add(3 * time.Minute)
	for _, entity := range []string{"sites", "work_centers"} {
		expected := want(entity)
		for {
			got := w.query(queries[entity])
			if got == expected {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not converge on the model: %s\nr1:\n%s\nr2:\n%s", entity, firstDifference(got, expected), tail("r1"), tail("r2"))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	if got := w.query(`SELECT count(*) FROM bridge.failed_records`); got != "0" {
		t.Errorf("%s dead letters:\n%s", got, w.query(`SELECT stage_failed, left(error_message, 200) FROM bridge.failed_records LIMIT 10`))
	}
	if got := w.query(`SELECT count(*) FROM bridge.pending_children`); got != "0" {
		t.Errorf("%s children still parked", got)
	}
	if kills == 0 || terminations == 0 || !restarted {
		t.Errorf("the chaos did not all happen: %d kills, %d terminations, restarted %v", kills, terminations, restarted)
	}

	// Memory: the slope of r1's resident set after the first fifth of the run.
	var steady []sample
	for _, s := range samples {
		if s.at >= duration/5 {
			steady = append(steady, s)
		}
	}
	if len(steady) < 5 {
		t.Fatalf("only %d memory samples of r1", len(steady))
	}
	var sx, sy, sxx, sxy float64
	for _, s := range steady {
		x := s.at.Hours()
		sx, sy, sxx, sxy = sx+x, sy+s.rss, sxx+x*x, sxy+x*s.rss
	}
	k := float64(len(steady))
	slope := (k*sxy - sx*sy) / (k*sxx - sx*sx)
	peak := slices.MaxFunc(samples, func(a, b sample) int { return int(a.rss - b.rss) }).rss
	t.Logf("r1 resident memory: %.0f MiB at %s, %.0f MiB at the end, peak %.0f MiB; slope %+.1f MiB/hour over the last %s (%d samples)",
		steady[0].rss, steady[0].at.Round(time.Second), steady[len(steady)-1].rss, peak, slope, (steady[len(steady)-1].at - steady[0].at).Round(time.Second), len(steady))
	fmt.Printf("soak: %d events in %s at %d/s, %d kills, %d terminations, 1 NATS restart: target equals the model, 0 dead letters; r1 RSS peak %.0f MiB, slope %+.1f MiB/hour\n",
		published, duration, rate, kills, terminations, peak, slope)
}

// residentMiB reads a process's resident set size.
func residentMiB(pid int) (float64, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(string(rest)), " kB"), 64)
			return kb / 1024, err == nil
		}
	}
	return 0, false
}

// firstDifference shows where two line lists part.
func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			return fmt.Sprintf("%d rows, want %d; line %d is %q, want %q", len(g), len(w), i+1, a, b)
		}
	}
	return "equal"
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	addr := freePort(t)
	_, p, _ := strings.Cut(addr, ":")
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return port
}
