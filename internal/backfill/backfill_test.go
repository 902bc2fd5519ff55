package backfill_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/backfill"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/sim"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.MainTemplate(m, "backfill")) }

type rig struct {
	t      *testing.T
	ctx    context.Context
	st     *store.Store
	conn   *pgx.Conn
	js     jetstream.JetStream
	runner *backfill.Runner
	now    time.Time
	// seq numbers the deliveries applyBodies makes; read is the last stream
	// sequence newMessages returned.
	seq, read uint64
}

// newRig gives t a database and a JetStream server of its own.
func newRig(t *testing.T, src backfill.Source) *rig {
	t.Helper()
	ctx := context.Background()
	dbURL := testenv.DB(t)
	st, err := store.Open(ctx, store.Config{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	srv := testenv.NATS(t)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(256))
	cat, defs := testenv.Shipped(t)
	if err := stream.Apply(ctx, js, defs); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, ctx: ctx, st: st, conn: conn, js: js}
	r.runner = &backfill.Runner{Store: st, Source: src, Publisher: &stream.Publisher{JS: js}, Catalog: cat, Replica: "test",
		Now: func() time.Time { return r.now }, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	return r
}

func (r *rig) at(s string) {
	r.t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		r.t.Fatal(err)
	}
	r.now = v
}

func (r *rig) query(sql string) string {
	r.t.Helper()
	return testenv.Rows(r.t, r.conn, sql)
}

// published returns the distinct message ids and the messages on subject.
func (r *rig) published(subject string) (ids map[string]int, n int) {
	r.t.Helper()
	ids = map[string]int{}
	s, err := r.js.Stream(r.ctx, event.Backfill.Stream)
	if err != nil {
		r.t.Fatal(err)
	}
	c, err := s.OrderedConsumer(r.ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		r.t.Fatal(err)
	}
	info, _ := s.Info(r.ctx)
	for n < int(info.State.Msgs) {
		m, err := c.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			break
		}
		ids[m.Headers().Get(jetstream.MsgIDHeader)]++
		n++
	}
	return ids, n
}

func TestBackfillOverSeveralNights(t *testing.T) {
	t.Parallel()
	erp := sim.New(sim.Config{Items: 1000})
	srv := httptest.NewServer(erp.Handler(sim.ServerConfig{}))
	defer srv.Close()
	r := newRig(t, &backfill.HTTPSource{BaseURL: srv.URL})
	days, page := 3, 100
	if err := r.st.SetSchedule(r.ctx, "items", backfill.Settings{Days: &days, PageSize: &page}); err != nil {
		t.Fatal(err)
	}
	if err := r.st.EnableSchedule(r.ctx, "items", true); err != nil {
		t.Fatal(err)
	}
	type night struct {
		at        string
		published int64
		offset    string
		nextRun   string
		completed bool
	}
	for _, n := range []night{
		{"2026-11-26T18:00:00Z", 0, "0", "2026-11-26 19:00:00 +0000 UTC", false}, // before the window: plans the first night
		{"2026-11-26T20:00:00Z", 334, "334", "2026-11-27 19:00:00 +0000 UTC", false},
		{"2026-11-27T20:30:00Z", 334, "668", "2026-11-28 19:00:00 +0000 UTC", false},
		{"2026-11-28T23:00:00Z", 332, "1000", "<nil>", true},
	} {
		r.at(n.at)
		res, err := r.runner.RunDue(r.ctx, "")
		if err != nil {
			t.Fatalf("%s: %v", n.at, err)
		}
		if len(res) != 1 || res[0].Published != n.published || res[0].Completed != n.completed {
			t.Fatalf("%s: %+v", n.at, res)
		}
		got := r.query(`SELECT current_offset, next_run_at, total_rows, rows_per_day FROM bridge.background_sync_schedule`)
		if want := n.offset + "|" + n.nextRun + "|1000|334"; got != want {
			t.Fatalf("%s: schedule %s, want %s", n.at, got, want)
		}
		// Half an hour later there is nothing due.
		r.now = r.now.Add(30 * time.Minute)
		if res, err := r.runner.RunDue(r.ctx, ""); err != nil || len(res) != 0 {
			t.Fatalf("%s + 30m: %+v %v", n.at, res, err)
		}
	}
	if got := r.query(`SELECT completed_at FROM bridge.background_sync_schedule`); got != "2026-11-28 23:00:00 +0000 UTC" {
		t.Errorf("completed_at %s", got)
	}
	// Every row was published exactly once.
	ids, n := r.published("apismith.backfill.items")
	if n != 1000 || len(ids) != 1000 {
		t.Fatalf("%d messages, %d distinct ids", n, len(ids))
	}
	if ids["items:"+event.HashKey([]string{"P00000999"})+":20260101001639"] != 1 {
		t.Errorf("message id of the last row missing; have e.g. %v", firstKey(ids))
	}
	// Each run is a background batch with its counts.
	if got := r.query(`SELECT sync_type, status, rows_published::text FROM bridge.sync_batches ORDER BY started_at`); got != "background|completed|334\nbackground|completed|334\nbackground|completed|332" {
		t.Errorf("batches:\n%s", got)
	}
	// The next night finds the cycle complete.
	r.at("2026-11-29T20:00:00Z")
	if res, err := r.runner.RunDue(r.ctx, ""); err != nil || len(res) != 0 {
		t.Fatalf("after completion: %+v %v", res, err)
	}
}

func firstKey(m map[string]int) string {
	for k := range m {
		return k
	}
	return ""
}

func TestBackfillRetriesThenStopsResumably(t *testing.T) {
	t.Parallel()
	erp := sim.New(sim.Config{Items: 300})
	flaky := httptest.NewServer(erp.Handler(sim.ServerConfig{FailEvery: 2, TruncateEvery: 3}))
	defer flaky.Close()
	r := newRig(t, &backfill.HTTPSource{BaseURL: flaky.URL, RetryFor: 10 * time.Second})
	days, page := 1, 50
	r.st.SetSchedule(r.ctx, "items", backfill.Settings{Days: &days, PageSize: &page})
	r.st.EnableSchedule(r.ctx, "items", true)
	r.at("2026-11-26T20:00:00Z")
	// 5xx and truncated pages are retried: the run completes.
	res, err := r.runner.RunDue(r.ctx, "items")
	if err != nil || len(res) != 1 || res[0].Published != 300 || !res[0].Completed {
		t.Fatalf("flaky source: %+v %v", res, err)
	}

	// A source that always fails: the run retries, then stops with a clear error
	// and an offset to resume from.
	down := httptest.NewServer(erp.Handler(sim.ServerConfig{FailEvery: 1}))
	r2 := newRig(t, &backfill.HTTPSource{BaseURL: down.URL, RetryFor: 500 * time.Millisecond})
	r2.st.SetSchedule(r2.ctx, "items", backfill.Settings{Days: &days, PageSize: &page})
	r2.st.EnableSchedule(r2.ctx, "items", true)
	r2.at("2026-11-26T20:00:00Z")
	// The first pages come through before the source goes down.
	healthy := httptest.NewServer(erp.Handler(sim.ServerConfig{}))
	defer healthy.Close()
	r2.runner.Source = &pagesThenFail{healthy: &backfill.HTTPSource{BaseURL: healthy.URL}, down: &backfill.HTTPSource{BaseURL: down.URL, RetryFor: 500 * time.Millisecond}, pages: 2}
	_, err = r2.runner.RunDue(r2.ctx, "items")
	if err == nil || !strings.Contains(err.Error(), "HTTP 503") || !strings.Contains(err.Error(), "offset 100; the next run resumes there") {
		t.Fatalf("err = %v", err)
	}
	if got := r2.query(`SELECT current_offset, current_cursor, last_error IS NOT NULL, next_run_at FROM bridge.background_sync_schedule`); got != "100|99|true|2026-11-26 20:05:00 +0000 UTC" {
		t.Fatalf("schedule after the failure: %s", got)
	}
	down.Close()
	// The source is back: the next run resumes at offset 100 and skips nothing.
	r2.runner.Source = &backfill.HTTPSource{BaseURL: healthy.URL}
	r2.at("2026-11-26T20:06:00Z")
	res, err = r2.runner.RunDue(r2.ctx, "items")
	if err != nil || len(res) != 1 || res[0].Published != 200 || !res[0].Completed {
		t.Fatalf("resumed: %+v %v", res, err)
	}
	ids, n := r2.published("apismith.backfill.items")
	if len(ids) != 300 || n != 300 {
		t.Fatalf("published %d messages with %d distinct ids, want 300", n, len(ids))
	}
	if got := r2.query(`SELECT status, rows_published::text, error_message IS NOT NULL FROM bridge.sync_batches ORDER BY started_at`); got != "failed|100|true\ncompleted|200|false" {
		t.Errorf("batches:\n%s", got)
	}
}

// pagesThenFail serves some pages from a healthy source, then fails.
type pagesThenFail struct {
	healthy, down backfill.Source
	pages         int
}

func (p *pagesThenFail) Count(ctx context.Context, entity string) (int64, error) {
	return p.healthy.Count(ctx, entity)
}

func (p *pagesThenFail) Page(ctx context.Context, entity, cursor string, limit int) ([]backfill.SourceRow, string, bool, error) {
	if p.pages > 0 {
		p.pages--
		return p.healthy.Page(ctx, entity, cursor, limit)
	}
	return p.down.Page(ctx, entity, cursor, limit)
}

func TestSourceErrors(t *testing.T) {
	t.Parallel()
	erp := sim.New(sim.Config{Items: 10})
	srv := httptest.NewServer(erp.Handler(sim.ServerConfig{Token: "right"}))
	defer srv.Close()
	_, err := (&backfill.HTTPSource{BaseURL: srv.URL, Token: "wrong"}).Count(context.Background(), "items")
	if err == nil || !strings.Contains(err.Error(), "HTTP 401") || !strings.Contains(err.Error(), "bearer token") {
		t.Errorf("a 4xx is a clear error, not retried: %v", err)
	}
	n, err := (&backfill.HTTPSource{BaseURL: srv.URL, Token: "right"}).Count(context.Background(), "items")
	if err != nil || n != 10 {
		t.Errorf("count %d %v", n, err)
	}
	_, _, _, err = (&backfill.HTTPSource{BaseURL: "http://127.0.0.1:1", RetryFor: 300 * time.Millisecond}).Page(context.Background(), "items", "", 5)
	if err == nil || !strings.Contains(err.Error(), "giving up after retrying") {
		t.Errorf("an unreachable source: %v", err)
	}
}
