package consumer

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// Config tunes one consumer. Zero fields take the defaults named; Validate refuses
// negative ones.
type Config struct {
	// BatchSize is the most messages fetched at once (default 500).
	BatchSize int
	// FetchWait is how long an idle fetch waits for the first message (default 1s).
	FetchWait time.Duration
	// BatchWindow is how long one rolling sync_batches row collects counts (default 1m).
	BatchWindow time.Duration
	// RetryFor bounds the in-process retries of one batch after a database failure
	// before its messages are nakked (default 0: retry until it commits).
	RetryFor time.Duration
	// NakDelay is the first redelivery delay after a batch was given up (RetryFor);
	// it doubles with every delivery up to 5 minutes (default 5s).
	NakDelay time.Duration
	// ShutdownGrace is how long a batch being written at shutdown may take to
	// commit (default 10s).
	ShutdownGrace time.Duration
	// BatchTimeout bounds one attempt to write a batch (default 2m).
	BatchTimeout time.Duration
	// EscalateAfter is how many times a batch may time out before its rows are
	// isolated (default 3).
	EscalateAfter int
	// Heartbeat is how often the messages a consumer holds are kept alive with
	// InProgress (default 10s, and at most a third of AckWait).
	Heartbeat time.Duration
	// AckWait is the JetStream consumer's ack wait (the first step of its backoff,
	// when it has one), if known: held messages are kept alive well within it,
	// whatever Heartbeat says (default 0: unknown).
	AckWait time.Duration
	// Lanes is how many transactions at most write one batch side by side, each
	// over keys of its own (pipeline.Prepared.Split), so that every version of a
	// key is written by one of them and batches still commit one after another.
	// A batch is split only when each lane gets at least LaneMin keys: a consumer
	// that is caught up writes its small batches in one transaction (default 2
	// lanes, 1: never split).
	Lanes int
	// LaneMin is the fewest keys a lane is given (default 100).
	LaneMin int
	// Replica names this process in sync_batches.
	Replica string
	// OnCommit, when set, is called after every committed batch (benchmarks, metrics).
	OnCommit func(entity string, source event.Source, msgs []pipeline.Message, res apply.Result)
	// OnHold, when set, is called when the consumer starts holding a batch after a
	// failed write (with the failure), at every retry, and when it stops (nil).
	OnHold func(entity string, source event.Source, failure error)
	// OnEscalate, when set, is called when a batch that kept timing out is written
	// with its rows isolated.
	OnEscalate func(entity string, source event.Source)
}

func (c Config) withDefaults() Config {
	c.BatchSize = cmp.Or(c.BatchSize, 500)
	c.Lanes = cmp.Or(c.Lanes, 2)
	c.LaneMin = cmp.Or(c.LaneMin, 100)
	c.FetchWait = cmp.Or(c.FetchWait, time.Second)
	c.BatchWindow = cmp.Or(c.BatchWindow, time.Minute)
	c.NakDelay = cmp.Or(c.NakDelay, 5*time.Second)
	c.ShutdownGrace = cmp.Or(c.ShutdownGrace, 10*time.Second)
	c.BatchTimeout = cmp.Or(c.BatchTimeout, 2*time.Minute)
	c.EscalateAfter = cmp.Or(c.EscalateAfter, 3)
	c.Heartbeat = cmp.Or(c.Heartbeat, 10*time.Second)
	if c.AckWait > 0 {
		c.Heartbeat = min(c.Heartbeat, c.AckWait/3)
	}
	return c
}

// Validate reports every setting out of range.
func (c Config) Validate() error {
	var errs []error
	if c.BatchSize < 0 {
		errs = append(errs, fmt.Errorf("consumer: the batch size must not be negative (%d)", c.BatchSize))
	}
	if c.Lanes < 0 || c.LaneMin < 0 {
		errs = append(errs, fmt.Errorf("consumer: the lanes (%d) and the keys per lane (%d) must not be negative", c.Lanes, c.LaneMin))
	}
	if c.EscalateAfter < 0 {
		errs = append(errs, fmt.Errorf("consumer: the timeouts before escalation must not be negative (%d)", c.EscalateAfter))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"fetch wait", c.FetchWait}, {"batch window", c.BatchWindow}, {"retry-for", c.RetryFor}, {"nak delay", c.NakDelay},
		{"shutdown grace", c.ShutdownGrace}, {"batch timeout", c.BatchTimeout}, {"heartbeat", c.Heartbeat}, {"ack wait", c.AckWait},
	} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("consumer: the %s must not be negative (%v)", d.name, d.d))
		}
	}
	return errors.Join(errs...)
}
