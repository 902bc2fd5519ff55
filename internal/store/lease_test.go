package store_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/testenv"
)

// One lease per replica name: a second taker is refused with the holder named,
// the name is free again once released, and other names are independent.
func TestLeaseIsExclusive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := testenv.DB(t)
	first, err := store.AcquireLease(ctx, dbURL, "lease-a", "syncflow pid=1 host=one replica=lease-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = store.AcquireLease(ctx, dbURL, "lease-a", "syncflow pid=2 host=two replica=lease-a", 300*time.Millisecond)
	var held *store.LeaseHeldError
	if !errors.As(err, &held) {
		t.Fatalf("second lease: %v", err)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Errorf("the second taker did not wait for a holder going away")
	}
	if held.Holder.Tag != "syncflow pid=1 host=one replica=lease-a" || held.Holder.Since.IsZero() || held.Holder.Addr == "" {
		t.Errorf("holder: %+v", held.Holder)
	}
	if msg := err.Error(); !strings.Contains(msg, `replica name "lease-a" is in use`) || !strings.Contains(msg, "pid=1 host=one") || !strings.Contains(msg, "another --replica") {
		t.Errorf("message: %s", msg)
	}
	other, err := store.AcquireLease(ctx, dbURL, "lease-b", "syncflow pid=3", 0)
	if err != nil {
		t.Fatalf("another name: %v", err)
	}
	other.Release()
	first.Release()
	again, err := store.AcquireLease(ctx, dbURL, "lease-a", "syncflow pid=2 host=two replica=lease-a", 0)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	again.Release()
	// Names whose 32-bit hashes collide are two leases.
	a, err := store.AcquireLease(ctx, dbURL, "worker-48148", "syncflow a", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release()
	b, err := store.AcquireLease(ctx, dbURL, "worker-203020", "syncflow b", 0)
	if err != nil {
		t.Fatalf("a name whose 32-bit hash collides with a held one: %v", err)
	}
	b.Release()
}

// A lease whose connection is cut is taken again; if another process took the
// name meanwhile, Keep says so and returns.
func TestLeaseKeptAcrossConnectionLoss(t *testing.T) {
	f := newFixture(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	kill := func(tag string) {
		t.Helper()
		if _, err := f.conn.Exec(f.ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, tag); err != nil {
			t.Fatal(err)
		}
	}
	holder := func() (string, string) {
		got := f.rows(`SELECT a.application_name, a.pid FROM pg_locks k JOIN pg_stat_activity a USING (pid) WHERE k.locktype = 'advisory' AND a.application_name LIKE 'lease-test%'`)
		name, pid, _ := strings.Cut(got, "|")
		return name, pid
	}
	lease, err := store.AcquireLease(f.ctx, f.url, "lease-c", "lease-test one", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release()
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan error, 1)
	go func() { done <- lease.Keep(ctx, 50*time.Millisecond, log) }()
	_, before := holder()
	if !lease.Held() {
		t.Fatal("a lease just taken is not held")
	}
	kill("lease-test one")
	deadline := time.Now().Add(5 * time.Second)
	for {
		name, pid := holder()
		if name == "lease-test one" && pid != before && lease.Held() {
			break // held again, on a new connection
		}
		if time.Now().After(deadline) {
			t.Fatalf("not taken again: %q %q (was pid %s)", name, pid, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Cut it again, and let another process take the name first.
	var thief *store.Lease
	for thief == nil && time.Now().Before(deadline) {
		kill("lease-test one")
		thief, _ = store.AcquireLease(f.ctx, f.url, "lease-c", "lease-test thief", 0)
	}
	if thief == nil {
		t.Fatal("the thief never got the lease")
	}
	defer thief.Release()
	select {
	case err := <-done:
		var heldErr *store.LeaseHeldError
		if !errors.As(err, &heldErr) || heldErr.Holder.Tag != "lease-test thief" {
			t.Errorf("Keep: %v", err)
		}
		if lease.Held() {
			t.Error("a lease taken by another process still says held")
		}
	case <-time.After(5 * time.Second):
		t.Error("Keep did not notice the name was taken")
	}
	cancel()
}
