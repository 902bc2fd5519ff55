package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/telemetry"
)

// OutsideCatalog is the entity label of the dead letters of subjects no catalog
// entity owns.
const OutsideCatalog = "_outside_catalog"

// observer keeps the metrics current and answers the health endpoints.
type observer struct {
	m        *telemetry.Metrics
	st       *store.Store
	nats     *stream.Conn
	catalog  *catalog.Live
	fetchers func() []boundFetcher
	// missing lists the entities whose durable consumer does not exist.
	missing func() []string
	// unmapped is what the unmapped-field counters were last brought up to.
	unmapped map[[2]string]int64
	log      *slog.Logger
	// lastReason is the last reason /readyz gave ("" when ready).
	lastReason atomic.Value

	mu   sync.Mutex
	held map[string]heldBatch // by "entity source": batches held after a failed write
}

type heldBatch struct {
	since  time.Time
	reason string
}

// hold is the consumers' OnHold: it counts the failed attempt and keeps what
// /readyz reports.
func (o *observer) hold(entity string, source event.Source, failure error) {
	key := entity + " " + source.Name
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.held == nil {
		o.held = map[string]heldBatch{}
	}
	if failure == nil {
		delete(o.held, key)
		o.m.Held.WithLabelValues(entity, source.Name).Set(0)
		return
	}
	reason := apply.Kind(failure)
	o.m.HeldRetries.WithLabelValues(entity, source.Name, reason).Inc()
	o.m.Held.WithLabelValues(entity, source.Name).Set(1)
	h, ok := o.held[key]
	if !ok {
		h.since = time.Now()
	}
	h.reason = reason
	o.held[key] = h
}

// heldReasons says which consumers hold a batch, and why, or "".
func (o *observer) heldReasons() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, key := range slices.Sorted(maps.Keys(o.held)) {
		h := o.held[key]
		out = append(out, fmt.Sprintf("%s holds a batch it cannot write since %s (%s)", key, h.since.UTC().Format(time.RFC3339), h.reason))
	}
	return strings.Join(out, "; ")
}

type boundFetcher struct {
	stream, entity string
	f              *stream.Fetcher
}

// record is the consumers' OnCommit: counts, durations, sizes and lag.
func (o *observer) record(entity string, source event.Source, msgs []pipeline.Message, res apply.Result) {
	src := source.Name
	c := res.Counts
	for outcome, n := range map[pipeline.Outcome]int64{pipeline.Inserted: c.Inserted, pipeline.Updated: c.Updated,
		pipeline.Unchanged: c.Unchanged, pipeline.Stale: c.Stale, pipeline.Deleted: c.Deleted, pipeline.Parked: c.Parked, pipeline.Failed: c.Failed} {
		if n > 0 {
			o.m.Events.WithLabelValues(entity, src, string(outcome)).Add(float64(n))
		}
	}
	if c.Released > 0 {
		o.m.Released.WithLabelValues(entity, src).Add(float64(c.Released))
	}
	for e, n := range res.Inverted {
		if n > 0 {
			o.m.Inversions.WithLabelValues(e).Add(float64(n))
		}
	}
	o.m.BatchDuration.WithLabelValues(entity, src).Observe(res.Took.Seconds())
	o.m.BatchSize.WithLabelValues(entity, src).Observe(float64(len(msgs)))
	now := time.Now()
	lag := o.m.Lag.WithLabelValues(entity, src)
	for _, msg := range msgs {
		if !msg.Delivery.Published.IsZero() {
			lag.Observe(now.Sub(msg.Delivery.Published).Seconds())
		}
	}
}

// refresh reads the bridge tables and the consumers into the gauges.
func (o *observer) refresh(ctx context.Context) error {
	for k, n := range o.st.UnmappedTotals() {
		if d := n - o.unmapped[k]; d > 0 {
			o.m.Unmapped.WithLabelValues(k[0], k[1]).Add(float64(d))
		}
		if o.unmapped == nil {
			o.unmapped = map[[2]string]int64{}
		}
		o.unmapped[k] = n
	}
	entities := o.catalog.Load().Names()
	stats, err := o.st.Stats(ctx, entities)
	if err != nil {
		return err
	}
	m, now := o.m, time.Now()
	m.DeadLetters.Reset()
	m.CheckpointAge.Reset()
	for _, s := range stats {
		for stage, n := range s.DeadLetters {
			m.DeadLetters.WithLabelValues(s.Entity, stage).Set(float64(n))
		}
		m.DeadLetterAge.WithLabelValues(s.Entity).Set(age(now, s.OldestDeadLetter))
		m.Parked.WithLabelValues(s.Entity).Set(float64(s.Parked))
		m.ParkedAge.WithLabelValues(s.Entity).Set(age(now, s.OldestParked))
		for _, c := range s.Checkpoints {
			m.CheckpointAge.WithLabelValues(s.Entity, c.SourceSystem).Set(age(now, c.SyncedAt))
		}
		if sc := s.Schedule; sc != nil && sc.Enabled {
			m.BackfillRows.WithLabelValues(s.Entity).Set(float64(sc.Offset))
			total, next, failing := 0.0, 0.0, 0.0
			if sc.TotalRows != nil {
				total = float64(*sc.TotalRows)
			}
			if sc.NextRun != nil {
				next = float64(sc.NextRun.Unix())
			}
			if sc.LastError != nil {
				failing = 1
			}
			m.BackfillTotal.WithLabelValues(s.Entity).Set(total)
			m.BackfillNextRun.WithLabelValues(s.Entity).Set(next)
			m.BackfillFailing.WithLabelValues(s.Entity).Set(failing)
		}
	}
	// A failed verification counted nothing: the last one that did not fail stands.
	verified, err := o.st.LastVerifications(ctx, false)
	if err != nil {
		return err
	}
	m.DriftRows.Reset()
	m.LastVerify.Reset()
	for _, v := range verified {
		for kind, n := range v.Comparison.Counts {
			m.DriftRows.WithLabelValues(v.Entity, string(kind)).Set(float64(n))
		}
		m.LastVerify.WithLabelValues(v.Entity).Set(float64(v.Finished.Unix()))
	}
	latest, err := o.st.LastVerifications(ctx, true)
	if err != nil {
		return err
	}
	m.VerifyFailing.Reset()
	for _, v := range latest {
		failing := 0.0
		if v.Error != "" {
			failing = 1
		}
		m.VerifyFailing.WithLabelValues(v.Entity).Set(failing)
	}
	// Dead letters of subjects no catalog entity owns count like any other, under
	// one label: their entity names come from the subjects, which anyone
	// publishing to the stream chooses.
	outside, err := o.st.CountDeadLetters(ctx, store.DeadLetterFilter{OutsideCatalog: entities, Unresolved: true})
	if err != nil {
		return err
	}
	var oldest *time.Time
	for _, k := range outside {
		m.DeadLetters.WithLabelValues(OutsideCatalog, k.Stage).Add(float64(k.Count))
		if oldest == nil || k.Oldest.Before(*oldest) {
			oldest = &k.Oldest
		}
	}
	m.DeadLetterAge.WithLabelValues(OutsideCatalog).Set(age(now, oldest))
	m.ConsumerMissing.Reset()
	for _, k := range o.missing() {
		entity, stream, _ := strings.Cut(k, " on ")
		m.ConsumerMissing.WithLabelValues(stream, entity).Set(1)
	}
	var errs []error
	for _, b := range o.fetchers() {
		pending, ackPending, err := b.f.Pending(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.ConsumerPending.WithLabelValues(b.stream, b.entity).Set(float64(pending))
		m.ConsumerAckPending.WithLabelValues(b.stream, b.entity).Set(float64(ackPending))
	}
	return errors.Join(errs...)
}

func age(now time.Time, t *time.Time) float64 {
	if t == nil {
		return 0
	}
	return now.Sub(*t).Seconds()
}

// runRefresh refreshes the gauges every interval until ctx ends.
func (o *observer) runRefresh(ctx context.Context, interval time.Duration) error {
	for {
		if err := o.refresh(ctx); err != nil && ctx.Err() == nil {
			o.log.Warn("refreshing metrics failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// ready reports why the service is not ready, or nil. The reason is SyncFlow's
// own words: a driver's error (which may quote hosts, users and internals) goes
// to the log, once per change of reason.
func (o *observer) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// The batches held come with whatever else is wrong: during an outage the
	// operator sees both the cause and who waits for it.
	var reasons []string
	var cause error
	if err := o.st.Ping(ctx); err != nil {
		reasons, cause = append(reasons, "PostgreSQL is not reachable"), err
	} else if have, dirty, err := o.st.SchemaVersion(ctx); err != nil {
		reasons, cause = append(reasons, "the bridge schema version cannot be read"), err
	} else if err := schemaProblem(have, dirty); err != nil {
		reasons = append(reasons, err.Error())
	}
	if connected, status := o.nats.Status(); !connected {
		reasons = append(reasons, "NATS is not connected (status "+status+")")
	}
	if held := o.heldReasons(); held != "" {
		reasons = append(reasons, held)
	}
	if missing := o.missing(); len(missing) > 0 {
		reasons = append(reasons, "no durable consumer for "+strings.Join(missing, ", ")+" (run `syncflow streams apply`)")
	}
	if len(reasons) > 0 {
		return o.notReady(strings.Join(reasons, "; "), cause)
	}
	if prev, _ := o.lastReason.Swap("").(string); prev != "" {
		o.log.Info("ready again")
	}
	return nil
}

func (o *observer) notReady(reason string, cause error) error {
	if prev, _ := o.lastReason.Swap(reason).(string); prev != reason {
		if cause != nil {
			o.log.Warn("not ready: "+reason, "err", cause)
		} else {
			o.log.Warn("not ready: " + reason)
		}
	}
	return errors.New(reason)
}

// serve answers /metrics, /healthz and /readyz on addr until ctx ends.
func (o *observer) serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := o.ready(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
