package deadletter_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/storetest"
)

// The decisions of the sweeper and the retry worker, over the memory store
// (internal/storetest), which keeps the contract the PostgreSQL store keeps. The
// store's clock moves only when a test moves it.

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type env struct {
	*storetest.Env
	mem *storetest.Memory
	now time.Time
}

func newEnv(t *testing.T, tune func(*deadletter.Config)) *env {
	t.Helper()
	cat := storetest.Catalog(t)
	e := &env{mem: storetest.NewMemory(cat), now: t0}
	e.mem.Now = func() time.Time { return e.now }
	cfg := storetest.Policy
	if tune != nil {
		tune(&cfg)
	}
	e.Env = storetest.NewEnv(t, e.mem, cat, cfg)
	return e
}

// wait moves the clock on.
func (e *env) wait(d time.Duration) { e.now = e.now.Add(d) }

// parked writes the parked children as "entity key -> parent key, re-checked n,
// next in d".
func (e *env) parked(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, p := range e.ParkedRows(t) {
		out = append(out, fmt.Sprintf("%s %s -> %s %s, re-checked %d, next in %v", p.Child.Entity, strings.Join(p.ChildKey, " "),
			p.Parent.Entity, p.ParentKey, p.Retries, p.NextAt.Sub(e.now)))
	}
	return out
}

// dead writes the dead letters as "stage entity key, retried n, k earlier"
// (attempts in the history), and then when they are retried next ("next in d",
// or "by hand") or how they were resolved.
func (e *env) dead(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, d := range e.DeadLetterRows(t) {
		s := strings.Join(append([]string{d.Stage, d.Entity}, storetest.KeyOf(e.Catalog, d.Entity, d.Raw)...), " ")
		s += fmt.Sprintf(", retried %d, %d earlier", d.Retries, len(d.History))
		switch {
		case d.Resolved:
			s += ", resolved: " + d.Note
		case d.NextAt == nil:
			s += ", by hand"
		default:
			s += fmt.Sprintf(", next in %v", d.NextAt.Sub(e.now))
		}
		out = append(out, s)
	}
	return out
}

func check(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n%s\nwant\n%s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestBackoffDoubles(t *testing.T) {
	b := deadletter.Backoff{FirstRetry: 30 * time.Second, MaxDelay: time.Hour, MaxRetries: 10}
	for retry, want := range []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute,
		16 * time.Minute, 32 * time.Minute, time.Hour, time.Hour, time.Hour} {
		if got := b.Delay(retry); got != want {
			t.Errorf("Delay(%d) = %v, want %v", retry, got, want)
		}
	}
}
