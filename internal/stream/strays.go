package stream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// StrayFinder finds subjects of a stream that no catalog consumer reads (an entity
// missing from the catalog, a subject with extra tokens) and gives a fetcher for
// each, over a durable consumer of its own that starts at the stream's beginning.
// Every message in the streams is thus read by someone, and ends as a dead letter.
type StrayFinder struct {
	JS     jetstream.JetStream
	Source event.Source
	// Known reports whether a catalog consumer reads subject.
	Known func(subject string) bool
	// Limit caps the stray consumers of this stream (default 100).
	Limit int

	fetchers map[string]*StrayFetcher
}

// StrayFetcher fetches the messages of one stray subject. While the durable
// consumer of the entity the subject belonged to still exists (the entity left
// the catalog, and its consumer is not pruned yet), it yields nothing as long as
// that consumer is still being read (it delivered a message within formerQuiet:
// a replica that has not read the new catalog yet), and acks at once what that
// consumer has acknowledged: neither is a stray.
type StrayFetcher struct {
	*Fetcher
	js     jetstream.JetStream
	stream string
	former string // the durable of the entity the subject belonged to
}

// Fetch returns the stray messages of the subject.
func (f *StrayFetcher) Fetch(ctx context.Context, n int, wait time.Duration) ([]pipeline.Message, error) {
	msgs, err := f.Fetcher.Fetch(ctx, n, wait)
	if len(msgs) == 0 || f.former == "" {
		return msgs, err
	}
	former, ferr := f.js.Consumer(ctx, f.stream, f.former)
	switch {
	case errors.Is(ferr, jetstream.ErrConsumerNotFound):
		return msgs, err
	case ferr != nil:
		giveBack(msgs)
		return nil, fmt.Errorf("consumer %s of the former entity: %w", f.former, ferr)
	}
	info, ferr := former.Info(ctx)
	if ferr != nil {
		giveBack(msgs)
		return nil, fmt.Errorf("consumer %s of the former entity: %w", f.former, ferr)
	}
	// (Its ack-pending count is no sign: messages given back at a stop stay
	// counted until someone pulls them again.)
	if info.Delivered.Last != nil && time.Since(*info.Delivered.Last) < formerQuiet {
		// Still read (a replica that has not put the new catalog in force
		// yet): wait until it has been quiet for a while.
		giveBack(msgs)
		return nil, err
	}
	out := msgs[:0:0]
	for _, m := range msgs {
		if m.Delivery.StreamSeq <= info.AckFloor.Stream {
			_ = m.Ack()
			continue
		}
		out = append(out, m)
	}
	return out, err
}

// formerQuiet is how long the consumer of an entity that left the catalog must
// have delivered nothing before its subject's messages are called strays.
const formerQuiet = 10 * time.Second

func giveBack(msgs []pipeline.Message) {
	for _, m := range msgs {
		_ = m.NakWithDelay(time.Second)
	}
}

// bind binds the durable consumer of a stray subject, creating it when it does
// not exist. A new one starts at the stream's beginning, or, when the subject
// belonged to an entity that left the catalog, after what that entity's durable
// consumer has acknowledged: what the entity consumed is not read again.
func (f *StrayFinder) bind(ctx context.Context, subject string) (*StrayFetcher, error) {
	durable, err := ensureStrayConsumer(ctx, f.JS, f.Source, subject, false)
	if err != nil {
		return nil, err
	}
	fetcher, err := NewFetcher(ctx, f.JS, f.Source, durable)
	if err != nil {
		return nil, err
	}
	former, _ := formerDurable(f.Source, subject)
	return &StrayFetcher{Fetcher: fetcher, js: f.JS, stream: f.Source.Stream, former: former}, nil
}

// entityName matches what can be a catalog entity's name.
var entityName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// formerDurable is the durable consumer an entity owning subject would have,
// when subject can be an entity's (not one with extra tokens).
func formerDurable(source event.Source, subject string) (string, bool) {
	entity, ok := strings.CutPrefix(subject, source.SubjectPrefix)
	if !ok || !entityName.MatchString(entity) {
		return "", false
	}
	return source.Durable(entity), true
}

// strayDurableName is the durable consumer of a stray subject.
func strayDurableName(source event.Source, subject string) string {
	sum := sha256.Sum256([]byte(subject))
	return "syncflow_" + source.Name + "_stray_" + hex.EncodeToString(sum[:8])
}

// ensureStrayConsumer creates the durable consumer of a stray subject unless it
// exists, and returns its name. It starts at the stream's beginning, or, while
// the durable consumer of the entity the subject belonged to still exists, after
// what that one acknowledged. With reposition (a consumer of an entity hands its
// subject over, by an admin), an existing stray consumer that is behind that
// point is made again from it: it was left by an earlier time the subject was a
// stray, and would read again what the entity applied since.
func ensureStrayConsumer(ctx context.Context, js jetstream.JetStream, source event.Source, subject string, reposition bool) (string, error) {
	durable := strayDurableName(source, subject)
	existing, err := js.Consumer(ctx, source.Stream, durable)
	switch {
	case err == nil && !reposition:
		return durable, nil
	case err == nil:
		name, ok := formerDurable(source, subject)
		if !ok {
			return durable, nil
		}
		former, ferr := js.Consumer(ctx, source.Stream, name)
		if ferr != nil || existing.CachedInfo().AckFloor.Stream >= former.CachedInfo().AckFloor.Stream {
			return durable, nil
		}
		if err := js.DeleteConsumer(ctx, source.Stream, durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return "", fmt.Errorf("repositioning the consumer of stray subject %s: %w", subject, err)
		}
	case !errors.Is(err, jetstream.ErrConsumerNotFound):
		return "", fmt.Errorf("consumer for stray subject %s: %w", subject, err)
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "SyncFlow: dead-letters messages on " + subject + ", which no catalog entity owns",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		FilterSubject: subject,
		MaxAckPending: 1000,
	}
	if name, ok := formerDurable(source, subject); ok {
		if former, err := js.Consumer(ctx, source.Stream, name); err == nil {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, former.CachedInfo().AckFloor.Stream+1
			cfg.Description += " (after what its former entity consumer acknowledged)"
		}
	}
	if _, err := js.CreateConsumer(ctx, source.Stream, cfg); err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
		return "", fmt.Errorf("consumer for stray subject %s: %w", subject, err)
	}
	return durable, nil
}

// Find lists the stream's subjects and returns a fetcher for each stray one.
func (f *StrayFinder) Find(ctx context.Context) ([]*StrayFetcher, error) {
	if f.fetchers == nil {
		f.fetchers = map[string]*StrayFetcher{}
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	s, err := f.JS.Stream(ctx, f.Source.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", f.Source.Stream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(">"))
	if err != nil {
		return nil, fmt.Errorf("stream %s subjects: %w", f.Source.Stream, err)
	}
	for subject := range f.fetchers {
		if f.Known(subject) {
			delete(f.fetchers, subject) // an entity owns it now
		}
	}
	var errs []string
	for _, subject := range slices.Sorted(maps.Keys(info.State.Subjects)) {
		if f.Known(subject) || f.fetchers[subject] != nil {
			continue
		}
		if len(f.fetchers) >= limit {
			errs = append(errs, fmt.Sprintf("more than %d stray subjects; %s and later ones are not read", limit, subject))
			break
		}
		fetcher, err := f.bind(ctx, subject)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		f.fetchers[subject] = fetcher
	}
	out := make([]*StrayFetcher, 0, len(f.fetchers))
	for _, subject := range slices.Sorted(maps.Keys(f.fetchers)) {
		out = append(out, f.fetchers[subject])
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return out, nil
}
