package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/syncflow/syncflow/internal/sim"
	"github.com/syncflow/syncflow/internal/testenv"
)

type verifyFigure struct {
	rows, drifted int64
	rate          float64 // keys compared per second (median)
	rss           float64 // MiB, the largest of the runs
}

// verifyRun measures `syncflow verify` (the real binary) over one entity of
// cfg.verifyRows items served by the simulator over HTTP, of which 1,000 drifted:
// 500 changed in the source without an event (stale), 500 edited in the target
// (target-edited). The ledger and the target are loaded in SQL, as a sync of the
// simulator's snapshot leaves them (testenv.LoadSyncedItems); the verifications
// publish nothing.
func (b *bench) verifyRun() (verifyFigure, error) {
	fig := verifyFigure{rows: b.cfg.verifyRows, drifted: 1000}
	if err := b.reset(); err != nil {
		return fig, err
	}
	erp, addr, stop, err := serveSim(b.cfg.verifyRows)
	if err != nil {
		return fig, err
	}
	defer stop()
	began := time.Now()
	if err := testenv.LoadSyncedItems(b.ctx, b.pool, b.cfg.verifyRows); err != nil {
		return fig, err
	}
	drift, err := erp.Drift(sim.DriftConfig{Entity: "items", Change: 500, Seed: 1})
	if err != nil {
		return fig, err
	}
	// 500 other rows edited in the target.
	if _, err := b.pool.Exec(b.ctx, `UPDATE schedulehub.items SET description = 'edited by hand' WHERE part_no IN
		(SELECT part_no FROM schedulehub.items WHERE part_no <> ALL ($1) ORDER BY part_no DESC LIMIT 500)`, drift.Changed); err != nil {
		return fig, err
	}
	fmt.Printf("  verify: %d items loaded in %v\n", b.cfg.verifyRows, time.Since(began).Round(time.Second))
	if os.Getenv("SYNCFLOW_BENCH_HOLD") != "" {
		fmt.Printf("  holding: database %s, APISmith %s; press Enter\n", b.dbURL, addr)
		_, _ = fmt.Scanln()
	}
	var rates []float64
	for i := range b.cfg.runs {
		var out bytes.Buffer
		cmd := exec.Command(b.cfg.binary, "verify", "--entity", "items", "--json", "--settle", "0", "--log-level", "warn")
		cmd.Env = append(os.Environ(), "SYNCFLOW_DATABASE_URL="+b.dbURL, "SYNCFLOW_NATS_URL="+b.srv.ClientURL(),
			"SYNCFLOW_APISMITH_URL="+addr)
		cmd.Stdout, cmd.Stderr = &out, os.Stderr
		start := time.Now()
		peak, err := testenv.RunPeakRSS(cmd)
		elapsed := time.Since(start)
		if code := cmd.ProcessState.ExitCode(); code != 4 {
			return fig, fmt.Errorf("verify exited %d (want 4, drift found): %v\n%s", code, err, out.String())
		}
		var res struct {
			Entities []struct {
				SourceRows int64            `json:"source_rows"`
				ScanMS     int64            `json:"scan_ms"`
				CompareMS  int64            `json:"compare_ms"`
				Counts     map[string]int64 `json:"counts"`
			} `json:"entities"`
		}
		if err := json.Unmarshal(out.Bytes(), &res); err != nil || len(res.Entities) != 1 {
			return fig, fmt.Errorf("verify printed %q: %v", out.String(), err)
		}
		e := res.Entities[0]
		if e.SourceRows != b.cfg.verifyRows || e.Counts["stale"] != 500 || e.Counts["target-edited"] != 500 ||
			e.Counts["missing"]+e.Counts["extra"]+e.Counts["target-missing"]+e.Counts["unhashed"] != 0 {
			return fig, fmt.Errorf("verify found %v over %d source rows; want 500 stale and 500 target-edited over %d", e.Counts, e.SourceRows, b.cfg.verifyRows)
		}
		rate := float64(b.cfg.verifyRows) / elapsed.Seconds()
		rss := float64(peak) / 1024
		fmt.Printf("  verify   run %d: %8.0f keys/s in %v (reading the source %v, comparing %v; peak RSS %.0f MiB)\n", i+1, rate,
			elapsed.Round(time.Millisecond), time.Duration(e.ScanMS)*time.Millisecond, time.Duration(e.CompareMS)*time.Millisecond, rss)
		rates = append(rates, rate)
		fig.rss = max(fig.rss, rss)
	}
	fig.rate = median(rates)
	return fig, nil
}
