package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cpuSplit is where the CPU of a SyncFlow drain went: the SyncFlow process and
// PostgreSQL (every postgres process, and those that exited meanwhile), for the
// capacity figures: events per core of each.
type cpuSplit struct {
	events             int
	syncflow, postgres time.Duration
}

// perCore returns events per second of one core of SyncFlow and of PostgreSQL.
func (c cpuSplit) perCore() (syncflow, postgres float64) {
	return float64(c.events) / c.syncflow.Seconds(), float64(c.events) / c.postgres.Seconds()
}

// clockTick is the kernel's USER_HZ, the unit of /proc/PID/stat times (100 on
// every Linux this runs on).
const clockTick = 100

// processCPU is a process's user and system time, and with children the time
// of its children that exited and were waited for.
func processCPU(pid string, children bool) (time.Duration, string) {
	data, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return 0, ""
	}
	s := string(data)
	open, shut := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || shut < 0 {
		return 0, ""
	}
	comm := s[open+1 : shut]
	f := strings.Fields(s[shut+1:]) // f[0] is field 3 (state)
	if len(f) < 15 {
		return 0, comm
	}
	sum := 0
	fields := []int{11, 12} // utime, stime (fields 14, 15)
	if children {
		fields = append(fields, 13, 14) // cutime, cstime
	}
	for _, i := range fields {
		n, _ := strconv.Atoi(f[i])
		sum += n
	}
	return time.Duration(sum) * time.Second / clockTick, comm
}

// selfCPU is the CPU this process has used.
func selfCPU() time.Duration {
	t, _ := processCPU("self", false)
	return t
}

// postgresCPU is the CPU PostgreSQL has used on this machine: its processes,
// and the postmaster's exited children. Zero when PostgreSQL runs elsewhere.
func postgresCPU() time.Duration {
	var total time.Duration
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		pid := filepath.Base(p)
		if t, comm := processCPU(pid, false); comm == "postgres" {
			total += t
			// The postmaster (a postgres whose parent is not postgres) has
			// its exited backends' time.
			if data, err := os.ReadFile(filepath.Join(p, "stat")); err == nil {
				f := strings.Fields(string(data)[strings.LastIndexByte(string(data), ')')+1:])
				if _, parent := processCPU(f[1], false); parent != "postgres" {
					withChildren, _ := processCPU(pid, true)
					total += withChildren - t
				}
			}
		}
	}
	return total
}
