package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
)

// Definitions are the streams, read from streams/ (or a --streams-dir), and the
// durable consumers, one per catalog entity and stream, built from the catalog.
type Definitions struct {
	Streams   map[string]jetstream.StreamConfig
	Consumers map[string]map[string]jetstream.ConsumerConfig // stream -> entity -> config
	// Advisories keeps the max-deliveries advisories; AdvisoriesConsumer reads them.
	Advisories         jetstream.StreamConfig
	AdvisoriesConsumer jetstream.ConsumerConfig
}

// The advisory stream and consumer definitions in streams/.
const (
	advisoryStreamFile   = "SYNCFLOW_ADVISORIES.json"
	advisoryConsumerFile = "consumers/SYNCFLOW_ADVISORIES/max_deliveries.json"
)

// LoadDefinitions reads <STREAM>.json for each stream and the advisory stream
// and consumer, and builds each catalog entity's consumers from its settings.
// Per-entity consumer files (consumers/<STREAM>/<entity>.json) are no longer
// read: finding one is an error that says where its settings go, so that tuned
// settings are not dropped in silence.
func LoadDefinitions(fsys fs.FS, cat *catalog.Catalog) (Definitions, error) {
	defs := Definitions{Streams: map[string]jetstream.StreamConfig{}, Consumers: map[string]map[string]jetstream.ConsumerConfig{}}
	var errs []error
	for _, src := range event.Sources {
		s := src.Stream
		var sc jetstream.StreamConfig
		if err := readJSON(fsys, s+".json", &sc); err != nil {
			errs = append(errs, err)
			continue
		}
		if sc.Name != s {
			errs = append(errs, fmt.Errorf("%s.json: name is %q, want %q", s, sc.Name, s))
		}
		if legacy, _ := fs.Glob(fsys, path.Join("consumers", s, "*.json")); len(legacy) > 0 {
			errs = append(errs, fmt.Errorf("%s: consumer files are no longer read; put their settings in the catalog (consumers: %s: {...}, for all entities or under one entity) and remove the files",
				strings.Join(legacy, ", "), src.Name))
		}
		defs.Streams[s] = sc
		defs.Consumers[s] = map[string]jetstream.ConsumerConfig{}
		for _, e := range cat.Entities() {
			defs.Consumers[s][e.Name] = ConsumerConfig(src, e)
		}
	}
	if err := readJSON(fsys, advisoryStreamFile, &defs.Advisories); err != nil {
		errs = append(errs, err)
	}
	if err := readJSON(fsys, advisoryConsumerFile, &defs.AdvisoriesConsumer); err != nil {
		errs = append(errs, err)
	}
	return defs, errors.Join(errs...)
}

// ConsumerConfig is the durable pull consumer of e's events on src's stream.
func ConsumerConfig(src event.Source, e *catalog.Entity) jetstream.ConsumerConfig {
	s := e.Consumer(src)
	return jetstream.ConsumerConfig{
		Durable:         src.Durable(e.Name),
		Description:     fmt.Sprintf("SyncFlow %s consumer for %s", src.Name, e.Name),
		DeliverPolicy:   jetstream.DeliverAllPolicy,
		AckPolicy:       jetstream.AckExplicitPolicy,
		AckWait:         s.AckWait,
		MaxDeliver:      s.MaxDeliver,
		BackOff:         slices.Clone(s.BackOff),
		FilterSubject:   src.Subject(e.Name),
		MaxAckPending:   s.MaxAckPending,
		MaxWaiting:      s.MaxWaiting,
		MaxRequestBatch: s.MaxBatch,
		ReplayPolicy:    jetstream.ReplayInstantPolicy,
	}
}

// WithReplicas returns the definitions with every stream (and so every
// consumer, which inherits it) stored on n servers of a JetStream cluster.
func (d Definitions) WithReplicas(n int) Definitions {
	streams := make(map[string]jetstream.StreamConfig, len(d.Streams))
	for name, sc := range d.Streams {
		sc.Replicas = n
		streams[name] = sc
	}
	d.Streams = streams
	// A consumer takes its stream's replica count only when it is created: one
	// made before the stream was scaled up would stay on one server, and stop
	// with it. So every consumer says its count.
	consumers := make(map[string]map[string]jetstream.ConsumerConfig, len(d.Consumers))
	for name, byEntity := range d.Consumers {
		consumers[name] = make(map[string]jetstream.ConsumerConfig, len(byEntity))
		for e, cc := range byEntity {
			cc.Replicas = n
			consumers[name][e] = cc
		}
	}
	d.Consumers = consumers
	if d.Advisories.Name != "" {
		d.Advisories.Replicas = n
		d.AdvisoriesConsumer.Replicas = n
	}
	return d
}

func readJSON(fsys fs.FS, name string, v any) error {
	b, err := fs.ReadFile(fsys, name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Apply creates or updates every stream and consumer; it is idempotent and
// removes nothing.
func Apply(ctx context.Context, js jetstream.JetStream, defs Definitions) error {
	plan, err := PlanChanges(ctx, js, defs, false)
	if err != nil {
		return err
	}
	return plan.Carry(ctx, js, defs)
}

// The actions of a plan.
const (
	Create    = "create"
	Update    = "update"
	Unchanged = "unchanged"
	Delete    = "delete"
)

// Change is one step of a plan: a stream or consumer to create, update or
// delete, or one that is already as defined.
type Change struct {
	Action string `json:"action"`
	Stream string `json:"stream"`
	Entity string `json:"entity,omitempty"`
	// Consumer is the durable name; empty for a change of the stream itself.
	Consumer string `json:"consumer,omitempty"`
	// Diff says what an update changes ("ack_wait 1m0s -> 1m30s") or why a
	// consumer is deleted.
	Diff []string `json:"diff,omitempty"`
}

// Plan is what applying the definitions would change, streams first.
type Plan []Change

// Count returns how many changes of the plan have action.
func (p Plan) Count(action string) int {
	n := 0
	for _, c := range p {
		if c.Action == action {
			n++
		}
	}
	return n
}

// strayDurable matches the durable consumers of stray subjects (StrayFinder).
var strayDurable = regexp.MustCompile(`^syncflow_[a-z]+_stray_[0-9a-f]{16}$`)

// PlanChanges compares the definitions with what the server has. The consumers
// of stray subjects that an entity now owns are deleted (they would resume where
// they stopped should the entity leave again, and dead-letter what it applied);
// with prune, so are the consumers of entities that left the catalog, each
// handing its subject over to a stray consumer that starts where it stopped.
// Consumers SyncFlow did not create are never touched.
func PlanChanges(ctx context.Context, js jetstream.JetStream, defs Definitions, prune bool) (Plan, error) {
	var plan Plan
	streams := []jetstream.StreamConfig{}
	if defs.Advisories.Name != "" {
		streams = append(streams, defs.Advisories)
	}
	for _, name := range slices.Sorted(maps.Keys(defs.Streams)) {
		streams = append(streams, defs.Streams[name])
	}
	for _, sc := range streams {
		existing, err := js.Stream(ctx, sc.Name)
		var have map[string]jetstream.ConsumerConfig
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			plan = append(plan, Change{Action: Create, Stream: sc.Name})
		case err != nil:
			return nil, fmt.Errorf("stream %s: %w", sc.Name, err)
		default:
			info, err := existing.Info(ctx)
			if err != nil {
				return nil, fmt.Errorf("stream %s: %w", sc.Name, err)
			}
			plan = append(plan, diffChange(Change{Stream: sc.Name}, streamDiff(info.Config, sc)))
			have = map[string]jetstream.ConsumerConfig{}
			names := existing.ConsumerNames(ctx)
			for n := range names.Name() {
				c, err := existing.Consumer(ctx, n)
				if err != nil {
					return nil, fmt.Errorf("consumer %s on %s: %w", n, sc.Name, err)
				}
				have[n] = c.CachedInfo().Config
			}
			if err := names.Err(); err != nil {
				return nil, fmt.Errorf("consumers of %s: %w", sc.Name, err)
			}
		}
		want := map[string]jetstream.ConsumerConfig{}
		entityOf := map[string]string{}
		if sc.Name == defs.Advisories.Name {
			want[defs.AdvisoriesConsumer.Durable] = defs.AdvisoriesConsumer
		}
		for entity, cc := range defs.Consumers[sc.Name] {
			want[cc.Durable] = cc
			entityOf[cc.Durable] = entity
		}
		for _, durable := range slices.Sorted(maps.Keys(want)) {
			cc := want[durable]
			change := Change{Stream: sc.Name, Entity: entityOf[durable], Consumer: durable}
			if old, ok := have[durable]; ok {
				plan = append(plan, diffChange(change, consumerDiff(old, cc)))
			} else {
				change.Action = Create
				plan = append(plan, change)
			}
		}
		src, ok := event.SourceOfStream(sc.Name)
		if !ok {
			continue
		}
		owned := map[string]bool{}
		for _, cc := range defs.Consumers[sc.Name] {
			owned[cc.FilterSubject] = true
		}
		for _, durable := range slices.Sorted(maps.Keys(have)) {
			if _, ok := want[durable]; ok {
				continue
			}
			old := have[durable]
			switch {
			case strayDurable.MatchString(durable) && owned[old.FilterSubject]:
				plan = append(plan, Change{Action: Delete, Stream: sc.Name, Consumer: durable,
					Diff: []string{"read the stray subject " + old.FilterSubject + ", which entity " + strings.TrimPrefix(old.FilterSubject, src.SubjectPrefix) + " now owns"}})
			case prune && strings.HasPrefix(durable, src.DurablePrefix) && !strayDurable.MatchString(durable):
				entity := strings.TrimPrefix(durable, src.DurablePrefix)
				plan = append(plan, Change{Action: Delete, Stream: sc.Name, Entity: entity, Consumer: durable,
					Diff: []string{"entity " + entity + " is not in the catalog"}})
			}
		}
	}
	return plan, nil
}

func diffChange(c Change, diff []string) Change {
	c.Action, c.Diff = Unchanged, diff
	if len(diff) > 0 {
		c.Action = Update
	}
	return c
}

// Carry carries the plan out, in order.
func (p Plan) Carry(ctx context.Context, js jetstream.JetStream, defs Definitions) error {
	configs := map[string]jetstream.StreamConfig{}
	for name, sc := range defs.Streams {
		configs[name] = sc
	}
	if defs.Advisories.Name != "" {
		configs[defs.Advisories.Name] = defs.Advisories
	}
	consumer := func(c Change) jetstream.ConsumerConfig {
		if c.Stream == defs.Advisories.Name && c.Consumer == defs.AdvisoriesConsumer.Durable {
			return defs.AdvisoriesConsumer
		}
		return defs.Consumers[c.Stream][c.Entity]
	}
	for _, c := range p {
		switch {
		case c.Action == Unchanged:
		case c.Consumer == "" && (c.Action == Create || c.Action == Update):
			var s jetstream.Stream
			err := retryBusy(ctx, func() (err error) {
				s, err = js.CreateOrUpdateStream(ctx, configs[c.Stream])
				return err
			})
			if err != nil {
				return fmt.Errorf("stream %s: %w%s", c.Stream, err, replicaHint(err))
			}
			if err := waitReplicated(ctx, s, configs[c.Stream].Replicas); err != nil {
				return fmt.Errorf("stream %s: %w", c.Stream, err)
			}
		case c.Action == Create || c.Action == Update:
			if err := createOrUpdateConsumer(ctx, js, c.Stream, consumer(c)); err != nil {
				return fmt.Errorf("consumer %s on %s: %w", c.Consumer, c.Stream, err)
			}
		case c.Action == Delete:
			// The consumer of an entity that left the catalog hands its subject
			// over to a stray consumer that starts where it stopped: what it
			// did not acknowledge becomes dead letters, what it did is not
			// read again.
			if source, ok := event.SourceOfStream(c.Stream); ok && c.Entity != "" && c.Consumer == source.Durable(c.Entity) {
				if _, err := ensureStrayConsumer(ctx, js, source, source.Subject(c.Entity), true); err != nil {
					return err
				}
			}
			if err := js.DeleteConsumer(ctx, c.Stream, c.Consumer); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("deleting consumer %s on %s: %w", c.Consumer, c.Stream, err)
			}
		}
	}
	return nil
}

// waitReplicated waits until every replica of a stream stored on several
// servers is current: a stream just scaled up is not safe from the loss of its
// leader until its new copies have caught up.
func waitReplicated(ctx context.Context, s jetstream.Stream, replicas int) error {
	if replicas <= 1 {
		return nil
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		current := 0
		if info.Cluster != nil {
			for _, r := range info.Cluster.Replicas {
				if r.Current {
					current++
				}
			}
		}
		if current >= replicas-1 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of its %d copies are current after 2 minutes; run streams apply again to wait more", current+1, replicas)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// errCodeConsumerReplicasExceedsStream is the server's JSConsumerReplicasExceedsStream.
const errCodeConsumerReplicasExceedsStream jetstream.ErrorCode = 10126

// createOrUpdateConsumer creates or updates a consumer. A stream that was just
// scaled up takes its new servers a moment later: until then the server refuses
// a consumer with the new replica count, so that is tried again for a while.
func createOrUpdateConsumer(ctx context.Context, js jetstream.JetStream, stream string, cc jetstream.ConsumerConfig) error {
	return retryBusy(ctx, func() error {
		_, err := js.CreateOrUpdateConsumer(ctx, stream, cc)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeConsumerReplicasExceedsStream {
			return errBusy{err}
		}
		return err
	})
}

// busyFor bounds how long a JetStream request that found the cluster busy is
// tried again.
const busyFor = 30 * time.Second

// retryBusy runs create until it succeeds, fails for a reason that another try
// would not change, or has been busy for busyFor. Busy is an answer that did
// not come within the request's timeout (a cluster electing leaders, or a
// loaded machine, takes longer than nats.go's five seconds to place a new
// stream), or an error create wraps in errBusy. Every create here is a
// create-or-update of the same configuration, so a try that timed out after
// the server had carried it out is harmless to repeat.
func retryBusy(ctx context.Context, create func() error) error {
	deadline := time.Now().Add(busyFor)
	for {
		err := create()
		if err != nil && ctx.Err() != nil {
			// Stopped (a shutdown, a caller's deadline): say so, not what the
			// try that was cut short says.
			return fmt.Errorf("%w (last try: %v)", ctx.Err(), err)
		}
		var busy errBusy
		if errors.As(err, &busy) {
			err = busy.err
		} else if !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) {
			return err
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last try: %v)", ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// errBusy marks an error that another try may not get.
type errBusy struct{ err error }

func (e errBusy) Error() string { return e.err.Error() }

func replicaHint(err error) string {
	if strings.Contains(strings.ToLower(err.Error()), "replicas > 1 not supported") {
		return " (this NATS server is not part of a JetStream cluster: use --replicas 1)"
	}
	return ""
}

// streamDiff lists the settings SyncFlow defines that the server holds
// differently.
func streamDiff(have, want jetstream.StreamConfig) []string {
	var d []string
	add := func(name string, a, b any) {
		if fmt.Sprint(a) != fmt.Sprint(b) {
			d = append(d, fmt.Sprintf("%s %v -> %v", name, a, b))
		}
	}
	add("subjects", have.Subjects, want.Subjects)
	add("max_age", have.MaxAge, want.MaxAge)
	add("max_bytes", have.MaxBytes, want.MaxBytes)
	add("max_msgs", have.MaxMsgs, want.MaxMsgs)
	add("max_msg_size", have.MaxMsgSize, want.MaxMsgSize)
	add("duplicate_window", have.Duplicates, cmpDuration(want.Duplicates, have.Duplicates))
	add("num_replicas", max(have.Replicas, 1), max(want.Replicas, 1))
	add("description", have.Description, want.Description)
	return d
}

// cmpDuration returns want, or have when want is zero (the server's default).
func cmpDuration(want, have time.Duration) time.Duration {
	if want == 0 {
		return have
	}
	return want
}

// consumerDiff lists the settings SyncFlow defines that the server holds
// differently.
func consumerDiff(have, want jetstream.ConsumerConfig) []string {
	var d []string
	add := func(name string, a, b any) {
		if fmt.Sprint(a) != fmt.Sprint(b) {
			d = append(d, fmt.Sprintf("%s %v -> %v", name, a, b))
		}
	}
	add("filter_subject", have.FilterSubject, want.FilterSubject)
	if len(want.BackOff) == 0 {
		// With a backoff, the server's ack wait is the first delay.
		add("ack_wait", have.AckWait, cmpDuration(want.AckWait, have.AckWait))
	}
	add("max_deliver", have.MaxDeliver, want.MaxDeliver)
	add("backoff", have.BackOff, want.BackOff)
	add("max_ack_pending", have.MaxAckPending, want.MaxAckPending)
	add("max_waiting", have.MaxWaiting, want.MaxWaiting)
	add("max_batch", have.MaxRequestBatch, want.MaxRequestBatch)
	if want.Replicas > 0 {
		add("num_replicas", max(have.Replicas, 1), want.Replicas)
	}
	add("description", have.Description, want.Description)
	return d
}
