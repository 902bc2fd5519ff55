package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// memoryFigure is SyncFlow's peak RSS in the two worst cases for memory: a parent
// releasing 30,000 waiting children of about 1 KiB, and a backlog of events of
// about 1 MiB.
type memoryFigure struct {
	releaseRSS, releaseSeconds float64
	releaseChildren            int
	bigRSS                     float64
	bigEvents                  int
}

// startSyncflow starts the binary on the bench's database and NATS.
func (b *bench) startSyncflow() (*exec.Cmd, error) {
	cmd := exec.Command(b.cfg.binary, "run", "--http-addr", "127.0.0.1:0", "--log-level", "warn", "--replica", "bench")
	cmd.Env = append(os.Environ(), "SYNCFLOW_DATABASE_URL="+b.dbURL, "SYNCFLOW_NATS_URL="+b.srv.ClientURL())
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w (build it: make build)", err)
	}
	return cmd, nil
}

// waitFor polls sql until it returns want, noting the process's peak RSS (KiB).
func (b *bench) waitFor(cmd *exec.Cmd, sql string, want int64, within time.Duration, rssKiB *float64) error {
	deadline := time.Now().Add(within)
	for {
		var got int64
		if err := b.pool.QueryRow(b.ctx, sql).Scan(&got); err != nil {
			return err
		}
		*rssKiB = max(*rssKiB, peakRSS(cmd.Process.Pid))
		if got == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d, want %d after %s", sql, got, want, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *bench) memoryRun() (memoryFigure, error) {
	f := memoryFigure{releaseChildren: 30_000, bigEvents: 200}
	if err := b.reset(); err != nil {
		return f, err
	}
	cmd, err := b.startSyncflow()
	if err != nil {
		return f, err
	}
	stop := func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }
	var rss float64
	pad := strings.Repeat("x", 900)
	var children []benchEvent
	for i := range f.releaseChildren {
		children = append(children, benchEvent{entity: "work_centers", body: fmt.Appendf(nil,
			`{"entity":"work_centers","op":"upsert","rowversion":"2026-11-01T00:00:00Z","data":{"CONTRACT":"S-MASS","WORK_CENTER_NO":"WC%05d","DESCRIPTION":%q}}`, i, pad)})
	}
	if err := b.publish(children); err != nil {
		stop()
		return f, err
	}
	if err := b.waitFor(cmd, `SELECT count(*) FROM bridge.pending_children`, int64(f.releaseChildren), 5*time.Minute, &rss); err != nil {
		stop()
		return f, err
	}
	start := time.Now()
	if err := b.publish([]benchEvent{{entity: "sites", body: []byte(`{"entity":"sites","op":"upsert","rowversion":"2026-11-01T00:00:00Z","data":{"CONTRACT":"S-MASS"}}`)}}); err != nil {
		stop()
		return f, err
	}
	// The last child parked is about the last released: its row, looked up by
	// key, says when to start counting them all (a count of 30,000 rows every
	// 20 ms took a quarter of a core from the release it measured).
	last := fmt.Sprintf(`SELECT count(*) FROM schedulehub.work_centers WHERE contract = 'S-MASS' AND work_center_no = 'WC%05d'`, f.releaseChildren-1)
	if err := b.waitFor(cmd, last, 1, 5*time.Minute, &rss); err != nil {
		stop()
		return f, err
	}
	if err := b.waitFor(cmd, `SELECT count(*) FROM schedulehub.work_centers WHERE contract = 'S-MASS'`, int64(f.releaseChildren), 5*time.Minute, &rss); err != nil {
		stop()
		return f, err
	}
	f.releaseSeconds, f.releaseRSS = time.Since(start).Seconds(), rss/1024
	stop()

	// A backlog of 1 MiB events, drained by a fresh process.
	if err := b.reset(); err != nil {
		return f, err
	}
	big := strings.Repeat("y", 1_000_000)
	var events []benchEvent
	for i := range f.bigEvents {
		events = append(events, benchEvent{entity: "items", body: fmt.Appendf(nil,
			`{"entity":"items","op":"upsert","rowversion":"20261101000000","data":{"PART_NO":"BIG%03d","DESCRIPTION":%q}}`, i, big)})
	}
	if err := b.publish(events); err != nil {
		return f, err
	}
	if cmd, err = b.startSyncflow(); err != nil {
		return f, err
	}
	rss = 0
	if err := b.waitFor(cmd, `SELECT count(*) FROM schedulehub.items`, int64(f.bigEvents), 5*time.Minute, &rss); err != nil {
		stop()
		return f, err
	}
	f.bigRSS = rss / 1024
	stop()
	return f, nil
}
