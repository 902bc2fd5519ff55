package stream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	var errs []string
	for _, subject := range slices.Sorted(maps.Keys(info.State.Subjects)) {
		if f.Known(subject) || f.fetchers[subject] != nil {
			continue
		}
		if len(f.fetchers) >= limit {
			errs = append(errs, fmt.Sprintf("more than %d stray subjects; %s and later ones are not read", limit, subject))
			break
		}
		sum := sha256.Sum256([]byte(subject))
		durable := "syncflow_" + f.Source.Name + "_stray_" + hex.EncodeToString(sum[:8])
		_, err := f.JS.CreateOrUpdateConsumer(ctx, f.Source.Stream, jetstream.ConsumerConfig{
			Durable:       durable,
			Description:   "SyncFlow: dead-letters messages on " + subject + ", which no catalog entity owns",
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			FilterSubject: subject,
			MaxAckPending: 1000,
		})
		if err != nil {
			errs = append(errs, fmt.Sprintf("consumer for stray subject %s: %v", subject, err))
			continue
		}
		fetcher, err := NewFetcher(ctx, f.JS, f.Source, durable)
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
