package catalog

import (
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/event"
)

func TestConsumerSettings(t *testing.T) {
	c, err := Parse([]byte(`
consumers:
  realtime: {ack_wait: 90s, max_ack_pending: 8000}
entities:
  sites:
    key: [CONTRACT]
    target: {table: schedulehub.sites, key: [contract]}
  items:
    key: [PART_NO]
    target: {table: schedulehub.items, key: [part_no]}
    consumers:
      realtime: {max_deliver: 4, backoff: [5s, 30s, 2m]}
      backfill: {ack_wait: 10m}
`))
	if err != nil {
		t.Fatal(err)
	}
	sites, _ := c.Entity("sites")
	items, _ := c.Entity("items")
	tests := []struct {
		name string
		got  ConsumerSettings
		want ConsumerSettings
	}{
		{"catalog block over the defaults", sites.Consumer(event.Realtime),
			ConsumerSettings{AckWait: 90 * time.Second, MaxDeliver: 10, MaxAckPending: 8000, MaxWaiting: 512, MaxBatch: 1000}},
		{"no block: the defaults", sites.Consumer(event.Backfill), DefaultConsumers[event.Backfill.Name]},
		{"entity block over the catalog block", items.Consumer(event.Realtime),
			ConsumerSettings{AckWait: 90 * time.Second, MaxDeliver: 4, MaxAckPending: 8000, MaxWaiting: 512, MaxBatch: 1000,
				BackOff: []time.Duration{5 * time.Second, 30 * time.Second, 2 * time.Minute}}},
		{"entity block over the defaults", items.Consumer(event.Backfill),
			ConsumerSettings{AckWait: 10 * time.Minute, MaxDeliver: 10, MaxAckPending: 5000, MaxWaiting: 512, MaxBatch: 1000}},
	}
	for _, tc := range tests {
		if tc.got.String() != tc.want.String() {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func TestConsumerSettingsInvalid(t *testing.T) {
	tests := []struct {
		name, block string
		want        string
	}{
		{"ack wait without a unit", `realtime: {ack_wait: 60}`, `entity "items": consumers: realtime: ack_wait: "60" is not a duration of at least 1s`},
		{"no deliveries", `backfill: {max_deliver: 0}`, `entity "items": consumers: backfill: max_deliver: 0 must be at least 1`},
		{"more delays than deliveries", `realtime: {max_deliver: 2, backoff: [1s, 2s, 3s]}`, `backoff: 3 delays for max_deliver 2`},
		{"a stream that is not one", `cdc: {ack_wait: 1m}`, `unknown setting cdc`},
		{"a misspelled setting", `realtime: {ack_wiat: 1m}`, `unknown setting ack_wiat (did you mean ack_wait?)`},
	}
	for _, tc := range tests {
		_, err := Parse([]byte("entities:\n  items:\n    key: [PART_NO]\n    target: {table: schedulehub.items, key: [part_no]}\n    consumers:\n      " + tc.block + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
