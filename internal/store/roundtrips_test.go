package store_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
)

// roundTrips counts what the store sends: a statement on its own, a pipeline
// (a pgx batch, however many statements it holds), or the preparation of new
// statements, each one round trip; trips names them. sent holds the whole
// text of each statement sent.
type roundTrips struct {
	mu    sync.Mutex
	trips []string
	sent  []string
}

func (r *roundTrips) add(s string, sqls ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.trips = append(r.trips, s)
	r.sent = append(r.sent, sqls...)
}

func (r *roundTrips) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.trips
	r.trips, r.sent = nil, nil
	return t
}

// times returns how many of the statements sent since the last take hold part.
func (r *roundTrips) times(part string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.sent {
		if strings.Contains(s, part) {
			n++
		}
	}
	return n
}

func firstWords(sql string) string {
	f := strings.Fields(sql)
	return strings.Join(f[:min(len(f), 3)], " ")
}

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.add(firstWords(d.SQL), d.SQL)
	return ctx
}
func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	var qs, sqls []string
	for _, q := range d.Batch.QueuedQueries {
		qs, sqls = append(qs, firstWords(q.SQL)), append(sqls, q.SQL)
	}
	r.add("["+strings.Join(qs, " | ")+"]", sqls...)
	return ctx
}
func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}
func (r *roundTrips) TracePrepareStart(ctx context.Context, _ *pgx.Conn, d pgx.TracePrepareStartData) context.Context {
	r.add("prepare " + firstWords(d.SQL))
	return ctx
}
func (r *roundTrips) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

// A batch of one message costs few round trips once the connection knows the
// statements: the statements whose answers nothing waits for (BEGIN, the
// savepoints, the counters) go with the next one. The re-check after the commit
// is not counted: it runs after the ack (apply.Batch.DeferRecheck).
func TestRoundTripsOfASmallBatch(t *testing.T) {
	trace := &roundTrips{}
	f := newFixture(t, func(c *fixtureConfig) {
		c.Store = store.WithTracer(c.Store, trace)
		c.Store.MaxConns = 1 // one connection: it has prepared the statements of the warm-up
	})
	f.applyParents()
	f.apply("work_centers", nil, `{"entity":"work_centers","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S1","WORK_CENTER_NO":"WC1"}}`)
	seq := uint64(100)
	applyOne := func(entity, body string) []string {
		t.Helper()
		seq++
		ds := []pipeline.Delivery{{Subject: "apismith.cdc." + entity, Source: event.Realtime, StreamSeq: seq, Data: []byte(body)}}
		e, _ := f.cat.Entity(entity)
		trace.take()
		res, err := f.ap.ApplyBatch(f.ctx, apply.Batch{Entity: e, Catalog: f.cat, BatchUID: f.batch, Source: event.Realtime,
			Replica: "test", Deliveries: ds, Prepared: pipeline.Preparer{Catalog: f.cat}.Prepare(ds), DeferRecheck: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.Counts.Inserted+res.Counts.Updated != 1 {
			t.Fatalf("%s: counts %+v, want the message written", entity, res.Counts)
		}
		return trace.take()
	}
	for _, tc := range []struct {
		name, entity string
		body         func(v string) string
		want         int
	}{
		// BEGIN with the ledger read; the savepoint with the target and ledger
		// statements and the release of the children waiting; the
		// savepoint's release with the counters and COMMIT.
		{"a parent", "sites", func(v string) string { return siteEvent("upsert", "S9", "2026-01-01T00:00:0"+v+"Z", "site "+v) }, 3},
		// The same; the check of its parents goes with the ledger read.
		{"a child whose parents are there", "work_orders", func(v string) string {
			return `{"entity":"work_orders","op":"upsert","rowversion":"2026-01-01T00:00:0` + v + `Z","data":{"ORDER_NO":"W1","CONTRACT":"S1","PART_NO":"P1","DESCRIPTION":"` + v + `"}}`
		}, 3},
		// A child without children: the ledger read with the check of its
		// parents; the write; the counters with COMMIT.
		{"a child without children whose parents are there", "work_order_operations", func(v string) string {
			return opEvent("W1", 10, "2026-01-01T00:00:0"+v+"Z", "op "+v)
		}, 3},
		// The same for a key new to the ledger: its target row goes first as
		// well, in the write's one round trip.
		{"a new child without children", "work_order_operations", func(v string) string {
			return opEvent("W1", 20+int(v[0]-'0'), "2026-01-01T00:00:0"+v+"Z", "op "+v)
		}, 3},
	} {
		applyOne(tc.entity, tc.body("1")) // the connection prepares the statements
		trips := applyOne(tc.entity, tc.body("2"))
		t.Logf("%s: %d round trips: %s", tc.name, len(trips), strings.Join(trips, "; "))
		if len(trips) > tc.want {
			t.Errorf("%s: %d round trips, want at most %d:\n%s", tc.name, len(trips), tc.want, strings.Join(trips, "\n"))
		}
	}
}
