package stream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/event"
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

	fetchers map[string]*Fetcher
}

// bind binds the durable consumer of a stray subject, creating it when it does
// not exist. A new one starts at the stream's beginning, or, when the subject
// belonged to an entity that left the catalog, after what that entity's durable
// consumer has acknowledged: what the entity consumed is not read again.
func (f *StrayFinder) bind(ctx context.Context, subject string) (*Fetcher, error) {
	durable, err := ensureStrayConsumer(ctx, f.JS, f.Source, subject)
	if err != nil {
		return nil, err
	}
	return NewFetcher(ctx, f.JS, f.Source, durable)
}

// strayDurableName is the durable consumer of a stray subject.
func strayDurableName(source event.Source, subject string) string {
	sum := sha256.Sum256([]byte(subject))
	return "syncflow_" + source.Name + "_stray_" + hex.EncodeToString(sum[:8])
}

// ensureStrayConsumer creates the durable consumer of a stray subject unless it
// exists, and returns its name. It starts at the stream's beginning, or, while
// the durable consumer of the entity the subject belonged to still exists, after
// what that one acknowledged.
func ensureStrayConsumer(ctx context.Context, js jetstream.JetStream, source event.Source, subject string) (string, error) {
	durable := strayDurableName(source, subject)
	_, err := js.Consumer(ctx, source.Stream, durable)
	switch {
	case err == nil:
		return durable, nil
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
	if entity, ok := strings.CutPrefix(subject, source.SubjectPrefix); ok {
		if former, err := js.Consumer(ctx, source.Stream, source.Durable(entity)); err == nil {
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
func (f *StrayFinder) Find(ctx context.Context) ([]*Fetcher, error) {
	if f.fetchers == nil {
		f.fetchers = map[string]*Fetcher{}
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
	out := make([]*Fetcher, 0, len(f.fetchers))
	for _, subject := range slices.Sorted(maps.Keys(f.fetchers)) {
		out = append(out, f.fetchers[subject])
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return out, nil
}
