package consumer

import (
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.BatchSize != 500 || c.FetchWait != time.Second || c.Heartbeat != 10*time.Second || c.EscalateAfter != 3 || c.RetryFor != 0 ||
		c.Lanes != 2 || c.LaneMin != 100 {
		t.Errorf("defaults: %+v", c)
	}
	// Held messages are kept alive well within the ack wait, whatever Heartbeat says.
	for _, tt := range []struct{ heartbeat, ackWait, want time.Duration }{
		{0, 0, 10 * time.Second}, {0, time.Minute, 10 * time.Second}, {0, 900 * time.Millisecond, 300 * time.Millisecond},
		{time.Second, 30 * time.Second, time.Second}, {time.Minute, 30 * time.Second, 10 * time.Second},
	} {
		if got := (Config{Heartbeat: tt.heartbeat, AckWait: tt.ackWait}).withDefaults().Heartbeat; got != tt.want {
			t.Errorf("heartbeat %v with ack wait %v: %v, want %v", tt.heartbeat, tt.ackWait, got, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("the zero config: %v", err)
	}
	err := Config{BatchSize: -1, RetryFor: -time.Second, Heartbeat: -time.Millisecond, Lanes: -2}.Validate()
	for _, want := range []string{"batch size must not be negative (-1)", "retry-for must not be negative (-1s)", "heartbeat must not be negative (-1ms)",
		"the lanes (-2) and the keys per lane (0) must not be negative"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want %q among its problems", err, want)
		}
	}
	if err := (StrayConfig{Interval: -time.Second}).Validate(); err == nil || !strings.Contains(err.Error(), "stray interval must not be negative") {
		t.Errorf("StrayConfig.Validate: %v", err)
	}
}
