package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// VmHWM reads the peak resident set of a running process, in KiB (0 once it is
// gone). The rusage of a finished child is no substitute: a Go parent starts
// its children with vfork, and the kernel counts the parent's peak into the
// child's.
func VmHWM(pid int) int64 {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// RunPeakRSS runs cmd to its end and returns its peak resident set in KiB, read
// from /proc every few milliseconds while it runs.
func RunPeakRSS(cmd *exec.Cmd) (int64, error) {
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var peak int64
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		peak = max(peak, VmHWM(cmd.Process.Pid))
		select {
		case err := <-done:
			return peak, err
		case <-tick.C:
		}
	}
}
