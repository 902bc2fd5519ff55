package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// machine describes what the figures were measured on.
func (b *bench) machine() string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kib float64
				fmt.Sscan(strings.TrimSpace(rest), &kib)
				mem = fmt.Sprintf(", %.0f GiB", kib/1024/1024)
			}
		}
	}
	var pg string
	if err := b.pool.QueryRow(b.ctx, `SHOW server_version`).Scan(&pg); err != nil {
		pg = "unknown"
	}
	return fmt.Sprintf("%s, %d cores%s; PostgreSQL %s; nats-server %s (embedded, file storage); %s",
		cpu, runtime.NumCPU(), mem, strings.Fields(pg)[0], server.VERSION, runtime.Version())
}

// appendHistory adds a dated row of the figures to the history table of a
// markdown file (under "## History", created when missing).
func (r results) appendHistory(file, commit, machine string, cfg config) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	text := string(data)
	const heading = "## History"
	if !strings.Contains(text, heading) {
		text = strings.TrimRight(text, "\n") + "\n\n" + heading + "\n\n" +
			"Every `make bench` run appends a row (medians; the ceiling is the best of its shapes).\n\n" +
			"| date | commit | SyncFlow events/s | naive | ceiling (shape) | SyncFlow / naive | SyncFlow / ceiling | p99 by rate | backfill rows/s | peak RSS | machine | verify keys/s (peak RSS) | items alone: SyncFlow / ceiling (shape) |\n" +
			"|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
	}
	ratio := func(a, b float64) string {
		if a == 0 || b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	var p99 []string
	for _, l := range r.latency {
		if l.behind != "" {
			p99 = append(p99, fmt.Sprintf("%d/s: did not keep up", l.rate))
			continue
		}
		p99 = append(p99, fmt.Sprintf("%d/s: %v", l.rate, l.p99.Round(time.Millisecond)))
	}
	verify := "-"
	if r.verify.rate > 0 {
		verify = fmt.Sprintf("%.0f (%.0f MiB; %d keys)", r.verify.rate, r.verify.rss, r.verify.rows)
	}
	single := "-"
	if s := r.single; s.syncflow > 0 {
		single = fmt.Sprintf("%.0f / %.0f (%s) = %s", s.syncflow, s.ceiling, s.shape, ratio(s.syncflow, s.ceiling))
	}
	row := fmt.Sprintf("| %s | %s | %.0f | %.0f | %.0f (%s) | %s | %s | %s | %.0f | %.0f MiB | %s, n=%d, runs=%d, batch=%d | %s | %s |\n",
		time.Now().UTC().Format("2006-01-02"), commit, r.syncflow, r.naive, r.ceiling, r.ceilingShape,
		ratio(r.syncflow, r.naive), ratio(r.syncflow, r.ceiling), strings.Join(p99, ", "), r.backfill.rate, r.rss,
		machine, cfg.n, cfg.runs, cfg.batch, verify, single)
	text = strings.TrimRight(text, "\n") + "\n" + row
	return os.WriteFile(file, []byte(text), 0o644)
}
