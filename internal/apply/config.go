package apply

import (
	"cmp"
	"errors"
	"log/slog"
	"time"
)

// Config says what applying stamps on the rows it creates, and how it isolates.
type Config struct {
	// ParkFirstRetry and ParkMaxRetries are given to a newly parked child: the
	// sweeper re-checks it after ParkFirstRetry and orphans it after ParkMaxRetries
	// re-checks. Required; the dead-letter worker's policy holds the defaults.
	ParkFirstRetry time.Duration
	ParkMaxRetries int
	// RetryFirst and RetryMax are given to a new dead letter of a stage that is
	// retried by itself (pipeline.Stage.Retried): its first retry comes after
	// RetryFirst, and there are RetryMax in all. Required, as the above.
	RetryFirst time.Duration
	RetryMax   int
	// IsolationTimeout is the statement timeout of a batch written with its rows
	// isolated after it kept timing out (default 30s).
	IsolationTimeout time.Duration
	// Logger receives the dead letters (one line each, rate-limited) and what
	// follows a commit and cannot fail it (default: discard).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.IsolationTimeout = cmp.Or(c.IsolationTimeout, 30*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every setting that is missing or out of range.
func (c Config) Validate() error {
	var errs []error
	if c.ParkFirstRetry <= 0 || c.ParkMaxRetries <= 0 {
		errs = append(errs, errors.New("apply: the first re-check and the number of re-checks of a parked child must be positive"))
	}
	if c.RetryFirst <= 0 || c.RetryMax <= 0 {
		errs = append(errs, errors.New("apply: the first retry and the number of retries of a dead letter must be positive"))
	}
	if c.IsolationTimeout < 0 {
		errs = append(errs, errors.New("apply: the isolation timeout must not be negative"))
	}
	return errors.Join(errs...)
}
