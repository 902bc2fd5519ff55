package deadletter

import (
	"cmp"
	"errors"
	"log/slog"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
)

// Backoff says when something is tried again: after FirstRetry, then twice as
// long each time up to MaxDelay, MaxRetries times in all.
type Backoff struct {
	FirstRetry, MaxDelay time.Duration
	MaxRetries           int
}

// The default policies: a parked child is re-checked after 30s, doubling up to an
// hour, ten times before it becomes an orphan; a dead letter of a stage retried by
// itself is retried after a minute, doubling up to an hour, five times.
var (
	DefaultPark  = Backoff{FirstRetry: 30 * time.Second, MaxDelay: time.Hour, MaxRetries: 10}
	DefaultRetry = Backoff{FirstRetry: time.Minute, MaxDelay: time.Hour, MaxRetries: 5}
)

// or fills the zero fields from def.
func (b Backoff) or(def Backoff) Backoff {
	b.FirstRetry = cmp.Or(b.FirstRetry, def.FirstRetry)
	b.MaxDelay = cmp.Or(b.MaxDelay, def.MaxDelay)
	b.MaxRetries = cmp.Or(b.MaxRetries, def.MaxRetries)
	return b
}

// Delay returns the wait before try number retry+1.
func (b Backoff) Delay(retry int) time.Duration {
	d := b.FirstRetry
	for i := 0; i < retry && d < b.MaxDelay; i++ {
		d *= 2
	}
	return min(d, b.MaxDelay)
}

// Config configures the sweeper and the retry worker.
type Config struct {
	// Park says how long parked children wait; Retry how dead letters are retried
	// (zero fields take DefaultPark's and DefaultRetry's).
	Park, Retry Backoff
	// Interval is how often the worker sweeps and retries (default 5s).
	Interval time.Duration
	// RoundLimit caps the rows of one sweep or retry transaction (default 500).
	RoundLimit int
	// NewUID generates batch UIDs (default UUIDv7).
	NewUID func() uuid.UUID
	// Logger receives what the worker did (default: discard).
	Logger *slog.Logger
}

// WithDefaults fills the zero fields.
func (c Config) WithDefaults() Config {
	c.Park, c.Retry = c.Park.or(DefaultPark), c.Retry.or(DefaultRetry)
	c.Interval = cmp.Or(c.Interval, 5*time.Second)
	c.RoundLimit = cmp.Or(c.RoundLimit, 500)
	if c.NewUID == nil {
		c.NewUID = func() uuid.UUID { return uuid.Must(uuid.NewV7()) }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every setting out of range.
func (c Config) Validate() error {
	var errs []error
	for name, b := range map[string]Backoff{"parked children": c.Park, "dead letters": c.Retry} {
		if b.FirstRetry < 0 || b.MaxDelay < 0 || b.MaxRetries < 0 || b.MaxDelay > 0 && b.MaxDelay < b.FirstRetry {
			errs = append(errs, errors.New("deadletter: the retries of "+name+" need a first delay up to the longest and a non-negative count"))
		}
	}
	return errors.Join(errs...)
}

// Stamp returns ac with the values a new parked child and a new dead letter get
// from these policies.
func (c Config) Stamp(ac apply.Config) apply.Config {
	c = c.WithDefaults()
	ac.ParkFirstRetry, ac.ParkMaxRetries = c.Park.FirstRetry, c.Park.MaxRetries
	ac.RetryFirst, ac.RetryMax = c.Retry.FirstRetry, c.Retry.MaxRetries
	return ac
}
