package service

import (
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/testenv"
)

// Validate reports every problem at once, the consumers' and the dead-letter
// worker's included; New refuses such a config before it touches anything.
func TestConfigValidate(t *testing.T) {
	cat, defs := testenv.Shipped(t)
	if err := (Config{Catalog: cat, Streams: defs, Backfill: true}).Validate(); err != nil {
		t.Errorf("a valid config: %v", err)
	}
	for _, tt := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"nothing", Config{}, []string{"stream definitions, or the files to read them from, are required"}},
		{"no consumer definitions", Config{Catalog: cat, Streams: stream.Definitions{Streams: defs.Streams}},
			[]string{`no consumer of APISMITH_CDC for entity "sites"`}},
		{"negative settings", Config{Catalog: cat, Streams: defs, MaxConns: -1, CheckpointInterval: -time.Second, StrayInterval: -time.Second,
			Consumer: consumer.Config{BatchSize: -5}, Park: deadletter.Backoff{MaxRetries: -1}},
			[]string{"most database connections must not be negative", "checkpoint interval must not be negative", "stray interval must not be negative",
				"batch size must not be negative (-5)", "retries of parked children"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			for _, want := range tt.want {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Validate: %v\nwant %q among its problems", err, want)
				}
			}
			if _, nerr := New(t.Context(), tt.cfg); nerr == nil || nerr.Error() != err.Error() {
				t.Errorf("New: %v, want the Validate error", nerr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.MappingResync != 30*time.Second || c.CheckpointInterval != 500*time.Millisecond || c.BackfillShare != 1 ||
		c.StatsInterval != 15*time.Second || c.LeaseWait != 5*time.Second || c.Logger == nil || c.NATS.Logger != c.Logger {
		t.Errorf("defaults: %+v", c)
	}
}
