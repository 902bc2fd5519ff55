package catalog

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/syncflow/syncflow/internal/event"
)

// ConsumerSettings tune one entity's durable consumer on one stream. The catalog
// holds them, so that adding an entity needs no file besides the catalog: the
// adapter turns them into JetStream consumer configurations.
type ConsumerSettings struct {
	// AckWait is how long JetStream waits for an ack before it redelivers.
	AckWait time.Duration `json:"ack_wait"`
	// MaxDeliver is how many times a message is delivered before JetStream
	// gives up on it (and SyncFlow dead-letters it at stage max_deliver).
	MaxDeliver int `json:"max_deliver"`
	// MaxAckPending caps the messages delivered and not yet acked.
	MaxAckPending int `json:"max_ack_pending"`
	// MaxWaiting caps the pull requests waiting at once.
	MaxWaiting int `json:"max_waiting"`
	// MaxBatch caps the messages of one pull request.
	MaxBatch int `json:"max_batch"`
	// BackOff, when set, replaces AckWait with one delay per redelivery.
	BackOff []time.Duration `json:"backoff,omitempty"`
}

// DefaultConsumers are the consumer settings of a catalog that names none: a
// backfill batch may wait behind realtime work, so its ack wait is longer.
var DefaultConsumers = map[string]ConsumerSettings{
	event.Realtime.Name: {AckWait: time.Minute, MaxDeliver: 10, MaxAckPending: 5000, MaxWaiting: 512, MaxBatch: 1000},
	event.Backfill.Name: {AckWait: 2 * time.Minute, MaxDeliver: 10, MaxAckPending: 5000, MaxWaiting: 512, MaxBatch: 1000},
}

// consumerBlock is a consumer's settings as the catalog file writes them; a
// setting it leaves out keeps the value it would have without the block.
type consumerBlock struct {
	AckWait       string   `yaml:"ack_wait"`
	MaxDeliver    *int     `yaml:"max_deliver"`
	MaxAckPending *int     `yaml:"max_ack_pending"`
	MaxWaiting    *int     `yaml:"max_waiting"`
	MaxBatch      *int     `yaml:"max_batch"`
	BackOff       []string `yaml:"backoff"`
}

// consumersBlock holds a block per stream, by source name (realtime, backfill).
type consumersBlock map[string]consumerBlock

var consumerShape = &shape{kind: "map", what: "a consumer's settings, e.g. {ack_wait: 60s, max_deliver: 10}", keys: map[string]*shape{
	"ack_wait":        {kind: "scalar", what: "a duration, e.g. 60s"},
	"max_deliver":     {kind: "scalar", what: "a number of deliveries, e.g. 10"},
	"max_ack_pending": {kind: "scalar", what: "a number of messages, e.g. 5000"},
	"max_waiting":     {kind: "scalar", what: "a number of pull requests, e.g. 512"},
	"max_batch":       {kind: "scalar", what: "a number of messages, e.g. 1000"},
	"backoff":         {kind: "list", what: "a list of durations, e.g. [10s, 1m, 5m]"},
}}

var consumersShape = &shape{kind: "map", what: "consumer settings per stream, e.g. {realtime: {ack_wait: 60s}, backfill: {ack_wait: 2m}}", keys: map[string]*shape{
	event.Realtime.Name: consumerShape,
	event.Backfill.Name: consumerShape,
}}

// apply returns base changed by the settings b sets; bad reports each bad value.
func (b consumerBlock) apply(base ConsumerSettings, bad func(format string, args ...any)) ConsumerSettings {
	s := base
	s.BackOff = slices.Clone(base.BackOff)
	if b.AckWait != "" {
		d, err := time.ParseDuration(b.AckWait)
		if err != nil || d < time.Second {
			bad("ack_wait: %q is not a duration of at least 1s (e.g. 60s, 2m)", b.AckWait)
		} else {
			s.AckWait = d
		}
	}
	for _, n := range []struct {
		name string
		v    *int
		into *int
	}{{"max_deliver", b.MaxDeliver, &s.MaxDeliver}, {"max_ack_pending", b.MaxAckPending, &s.MaxAckPending},
		{"max_waiting", b.MaxWaiting, &s.MaxWaiting}, {"max_batch", b.MaxBatch, &s.MaxBatch}} {
		if n.v == nil {
			continue
		}
		if *n.v < 1 {
			bad("%s: %d must be at least 1", n.name, *n.v)
			continue
		}
		*n.into = *n.v
	}
	if b.BackOff != nil {
		s.BackOff = nil
		for _, v := range b.BackOff {
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second {
				bad("backoff: %q is not a duration of at least 1s", v)
				continue
			}
			s.BackOff = append(s.BackOff, d)
		}
	}
	if len(s.BackOff) > s.MaxDeliver {
		bad("backoff: %d delays for max_deliver %d (one delay per redelivery at most)", len(s.BackOff), s.MaxDeliver)
	}
	return s
}

// resolve merges blocks over base, for each stream.
func (c consumersBlock) resolve(base map[string]ConsumerSettings, bad func(format string, args ...any)) map[string]ConsumerSettings {
	out := make(map[string]ConsumerSettings, len(base))
	for _, name := range slices.Sorted(maps.Keys(base)) {
		b := c[name]
		out[name] = b.apply(base[name], func(format string, args ...any) {
			bad("consumers: %s: "+format, append([]any{name}, args...)...)
		})
	}
	return out
}

// Consumer returns the settings of the entity's consumer on source's stream.
func (e *Entity) Consumer(source event.Source) ConsumerSettings {
	if s, ok := e.Consumers[source.Name]; ok {
		return s
	}
	return DefaultConsumers[source.Name]
}

func (s ConsumerSettings) String() string {
	return fmt.Sprintf("ack_wait %s, max_deliver %d, max_ack_pending %d, max_waiting %d, max_batch %d, backoff %v",
		s.AckWait, s.MaxDeliver, s.MaxAckPending, s.MaxWaiting, s.MaxBatch, s.BackOff)
}
