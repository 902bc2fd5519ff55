package telemetry

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are SyncFlow's Prometheus metrics. Labels stay bounded: entities, streams,
// stages and outcomes, never keys or UIDs.
type Metrics struct {
	Registry *prometheus.Registry

	Events          *prometheus.CounterVec   // entity, source, outcome
	Released        *prometheus.CounterVec   // entity, source
	BatchDuration   *prometheus.HistogramVec // entity, source
	BatchSize       *prometheus.HistogramVec // entity, source
	Lag             *prometheus.HistogramVec // entity, source
	Held            *prometheus.GaugeVec     // entity, source
	HeldRetries     *prometheus.CounterVec   // entity, source, reason
	Escalations     *prometheus.CounterVec   // entity, source
	Inversions      *prometheus.CounterVec   // entity
	Unmapped        *prometheus.CounterVec   // entity, field
	ConsumerMissing *prometheus.GaugeVec     // stream, entity

	ConsumerPending    *prometheus.GaugeVec // stream, entity
	ConsumerAckPending *prometheus.GaugeVec // stream, entity
	DeadLetters        *prometheus.GaugeVec // entity, stage
	DeadLetterAge      *prometheus.GaugeVec // entity
	Parked             *prometheus.GaugeVec // entity
	ParkedAge          *prometheus.GaugeVec // entity
	CheckpointAge      *prometheus.GaugeVec // entity, source_system
	BackfillRows       *prometheus.GaugeVec // entity
	BackfillTotal      *prometheus.GaugeVec // entity
	BackfillNextRun    *prometheus.GaugeVec // entity
	BackfillFailing    *prometheus.GaugeVec // entity
	DriftRows          *prometheus.GaugeVec // entity, kind
	LastVerify         *prometheus.GaugeVec // entity
	VerifyFailing      *prometheus.GaugeVec // entity
}

// NewMetrics registers every metric, with the Go and process collectors, on a
// registry of its own.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	m := &Metrics{Registry: r}
	es := []string{"entity", "source"}
	m.Events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncflow_events_total",
		Help: "Events by outcome: inserted, updated, unchanged, stale, deleted, parked, failed."}, append(es, "outcome"))
	m.Released = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncflow_released_total",
		Help: "Parked children released by the batches of an entity (its parents)."}, es)
	m.BatchDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "syncflow_batch_duration_seconds",
		Help: "Time to write one fetched batch, retries included.", Buckets: prometheus.ExponentialBuckets(0.002, 2, 14)}, es)
	m.BatchSize = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "syncflow_batch_size",
		Help: "Messages in one fetched batch.", Buckets: []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000}}, es)
	m.Lag = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "syncflow_end_to_end_lag_seconds",
		Help: "From JetStream storing an event to the commit of its batch.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)}, es)
	m.Held = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_batch_held",
		Help: "1 while the entity's consumer holds a batch it could not write (the database is failing), retrying it."}, es)
	m.HeldRetries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncflow_batch_write_retries_total",
		Help: "Failed attempts to write a batch, by reason: database unavailable, transaction conflict, timed out, error."}, append(es, "reason"))
	m.Escalations = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncflow_batch_timeout_escalations_total",
		Help: "Batches that kept timing out and were written with their rows isolated."}, es)
	m.Unmapped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncflow_unmapped_field_values_total",
		Help: "Values of event fields that no mapping rule maps and no target column takes (at most 50 fields per entity, then (other)); see syncflow drift."}, []string{"entity", "field"})
	m.Inversions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncflow_rowversion_inversions_total",
		Help: "Realtime events judged stale although published after the applied version: a later change with a lower rowversion (source clock or time-zone trouble)."}, []string{"entity"})
	sc := []string{"stream", "entity"}
	m.ConsumerMissing = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_consumer_missing",
		Help: "1 for a catalog entity whose durable consumer does not exist on the stream: its events are read by nobody (run syncflow streams apply)."}, sc)
	m.ConsumerPending = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_consumer_pending_messages",
		Help: "Messages in the stream not yet delivered to the entity's consumer."}, sc)
	m.ConsumerAckPending = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_consumer_ack_pending_messages",
		Help: "Messages delivered to the entity's consumer and not yet acknowledged."}, sc)
	m.DeadLetters = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_dead_letters",
		Help: "Unresolved dead letters."}, []string{"entity", "stage"})
	m.DeadLetterAge = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_dead_letter_oldest_age_seconds",
		Help: "Age of the oldest unresolved dead letter (0 when there is none)."}, []string{"entity"})
	m.Parked = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_parked_children",
		Help: "Children waiting for a parent."}, []string{"entity"})
	m.ParkedAge = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_parked_oldest_age_seconds",
		Help: "Age of the oldest parked child (0 when there is none)."}, []string{"entity"})
	m.CheckpointAge = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_checkpoint_age_seconds",
		Help: "Time since the entity's checkpoint last advanced."}, []string{"entity", "source_system"})
	m.BackfillRows = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_backfill_rows",
		Help: "Rows published in the current backfill cycle."}, []string{"entity"})
	m.BackfillTotal = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_backfill_rows_total",
		Help: "Rows of the current backfill cycle (0 before it starts)."}, []string{"entity"})
	m.BackfillNextRun = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_backfill_next_run_timestamp_seconds",
		Help: "When the entity's backfill is next due (0 when not planned)."}, []string{"entity"})
	m.BackfillFailing = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_backfill_failing",
		Help: "1 when the entity's last backfill run failed."}, []string{"entity"})
	m.DriftRows = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_drift_rows",
		Help: "Rows the entity's last verification found different from the source or the target, by kind (syncflow verify)."}, []string{"entity", "kind"})
	m.LastVerify = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_last_verify_timestamp",
		Help: "When the entity's last verification finished (Unix seconds; absent before the first)."}, []string{"entity"})
	m.VerifyFailing = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "syncflow_verify_failing",
		Help: "1 when the entity's latest verification failed (its drift figures are the last good one's)."}, []string{"entity"})
	for _, c := range []prometheus.Collector{m.DriftRows, m.LastVerify, m.VerifyFailing, m.Events, m.Released, m.BatchDuration, m.BatchSize, m.Lag, m.Held, m.HeldRetries, m.Escalations, m.Inversions, m.Unmapped, m.ConsumerMissing, m.ConsumerPending,
		m.ConsumerAckPending, m.DeadLetters, m.DeadLetterAge, m.Parked, m.ParkedAge, m.CheckpointAge, m.BackfillRows,
		m.BackfillTotal, m.BackfillNextRun, m.BackfillFailing} {
		f(c)
	}
	return m
}

// Pool reports database pool numbers on every scrape.
type Pool struct {
	Acquired, Idle, Total, Max int32
	AcquireCount               int64
	AcquireWait                time.Duration
}

// RegisterPool adds the database pool metrics, read through stats at each scrape.
func (m *Metrics) RegisterPool(stats func() Pool) {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	conns := desc("syncflow_db_pool_connections", "Database connections by state.", "state")
	maxConns := desc("syncflow_db_pool_max_connections", "The pool's connection limit.")
	acquires := desc("syncflow_db_pool_acquires_total", "Connections acquired from the pool.")
	wait := desc("syncflow_db_pool_acquire_wait_seconds_total", "Time spent waiting for a connection.")
	m.Registry.MustRegister(collectorFunc{descs: []*prometheus.Desc{conns, maxConns, acquires, wait}, collect: func(ch chan<- prometheus.Metric) {
		s := stats()
		ch <- prometheus.MustNewConstMetric(conns, prometheus.GaugeValue, float64(s.Acquired), "acquired")
		ch <- prometheus.MustNewConstMetric(conns, prometheus.GaugeValue, float64(s.Idle), "idle")
		ch <- prometheus.MustNewConstMetric(conns, prometheus.GaugeValue, float64(s.Total), "total")
		ch <- prometheus.MustNewConstMetric(maxConns, prometheus.GaugeValue, float64(s.Max))
		ch <- prometheus.MustNewConstMetric(acquires, prometheus.CounterValue, float64(s.AcquireCount))
		ch <- prometheus.MustNewConstMetric(wait, prometheus.CounterValue, s.AcquireWait.Seconds())
	}})
}

type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
