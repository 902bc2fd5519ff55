package backfill_test

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/backfill"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/sim"
	"github.com/syncflow/syncflow/internal/testenv"
)

// applyBodies applies event bodies of entity as one backfill batch, as the
// backfill consumer would.
func (r *rig) applyBodies(entity string, bodies [][]byte) {
	r.t.Helper()
	cat, _ := testenv.Shipped(r.t)
	if err := r.st.PrepareTargets(r.ctx, cat); err != nil {
		r.t.Fatal(err)
	}
	ap, err := apply.NewApplier(r.st, deadletter.Config{}.Stamp(apply.Config{}))
	if err != nil {
		r.t.Fatal(err)
	}
	r.seq += uint64(len(bodies))
	ds := make([]pipeline.Delivery, len(bodies))
	for i, b := range bodies {
		ds[i] = pipeline.Delivery{Subject: event.Backfill.Subject(entity), Source: event.Backfill, StreamSeq: r.seq - uint64(len(bodies)-i), Data: b}
	}
	e, _ := cat.Entity(entity)
	res, err := ap.ApplyBatch(r.ctx, apply.Batch{Entity: e, Catalog: cat, BatchUID: uuid.Must(uuid.NewV7()), NewBatch: true,
		Source: event.Backfill, Replica: "test", Deliveries: ds, Prepared: pipeline.Preparer{Catalog: cat}.Prepare(ds)})
	if err != nil || res.Counts.Failed > 0 {
		r.t.Fatalf("applying %d %s: %v %+v", len(bodies), entity, err, res.Counts)
	}
}

// syncAll applies every live row of entity the ERP serves.
func (r *rig) syncAll(erp *sim.ERP, entity string) {
	r.t.Helper()
	n, _ := erp.Count(entity)
	var bodies [][]byte
	for i := int64(0); i < n; i++ {
		row, ok := erp.Current(entity, i)
		if !ok {
			continue
		}
		b, _ := json.Marshal(map[string]any{"entity": entity, "op": "upsert", "rowversion": row.RowVersion, "data": row.Data})
		bodies = append(bodies, b)
	}
	r.applyBodies(entity, bodies)
}

// newMessages returns the bodies published on subject since the last call.
func (r *rig) newMessages(subject string) [][]byte {
	r.t.Helper()
	s, err := r.js.Stream(r.ctx, event.Backfill.Stream)
	if err != nil {
		r.t.Fatal(err)
	}
	info, _ := s.Info(r.ctx)
	var out [][]byte
	if info.State.LastSeq <= r.read {
		return nil
	}
	c, err := s.OrderedConsumer(r.ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: r.read + 1})
	if err != nil {
		r.t.Fatal(err)
	}
	for {
		m, err := c.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			break
		}
		out = append(out, m.Data())
		meta, _ := m.Metadata()
		if meta.Sequence.Stream >= info.State.LastSeq {
			break
		}
	}
	r.read = info.State.LastSeq
	return out
}

// A schedule in verify mode, under the injected clock: nothing outside the
// window; a converged night publishes nothing; a night after drift publishes
// only the drifted rows, at most the night's quota, and the next night the rest;
// every night's verification is kept.
func TestVerifyNights(t *testing.T) {
	t.Parallel()
	erp := sim.New(sim.Config{Items: 200})
	srv := httptest.NewServer(erp.Handler(sim.ServerConfig{}))
	defer srv.Close()
	r := newRig(t, &backfill.HTTPSource{BaseURL: srv.URL})
	r.runner.VerifySettle = time.Millisecond
	r.syncAll(erp, "items")
	publish, mode, days, window, tz := backfill.ModePublish, backfill.ModeVerify, 10, "19:00", "UTC"
	end := "07:00"
	if err := r.st.SetSchedule(r.ctx, "items", backfill.Settings{Mode: &publish, Days: &days, WindowStart: &window, WindowEnd: &end, TimeZone: &tz}); err != nil {
		t.Fatal(err)
	}
	// Tonight's publish run counted its rows; switched to verify mode, the
	// night's quota starts afresh.
	if _, err := r.conn.Exec(r.ctx, `UPDATE bridge.background_sync_schedule SET window_rows = 5000, window_started_at = '2026-11-26T19:00:00Z'`); err != nil {
		t.Fatal(err)
	}
	if err := r.st.SetSchedule(r.ctx, "items", backfill.Settings{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	if got := r.query(`SELECT mode, window_rows, window_started_at IS NULL FROM bridge.background_sync_schedule`); got != "verify|0|true" {
		t.Fatalf("switched to verify mode: %s", got)
	}
	if err := r.st.EnableSchedule(r.ctx, "items", true); err != nil {
		t.Fatal(err)
	}
	run := func(at string) backfill.Result {
		t.Helper()
		r.at(at)
		res, err := r.runner.RunDue(r.ctx, "items")
		if err != nil {
			t.Fatalf("%s: %v", at, err)
		}
		if len(res) != 1 {
			t.Fatalf("%s: %d results", at, len(res))
		}
		return res[0]
	}
	if res := run("2026-11-26T12:00:00Z"); res.Skipped == "" || r.query(`SELECT count(*) FROM bridge.verifications`) != "0" {
		t.Fatalf("outside the window: %+v, %s verifications", res, r.query(`SELECT count(*) FROM bridge.verifications`))
	}
	if res := run("2026-11-26T20:00:00Z"); res.Published != 0 || !res.Completed || res.NextRun == nil || !res.NextRun.Equal(time.Date(2026, 11, 27, 19, 0, 0, 0, time.UTC)) {
		t.Fatalf("a converged night: %+v", res)
	}
	if got := r.query(`SELECT trigger, source_rows, missing + stale + extra + target_edited + target_missing FROM bridge.verifications`); got != "schedule|200|0" {
		t.Fatalf("the converged night's verification: %s", got)
	}
	if msgs := r.newMessages("apismith.backfill.items"); len(msgs) != 0 {
		t.Fatalf("a converged night published %d rows", len(msgs))
	}
	// Drift: 4 rows created, 9 changed and 3 deleted in the ERP without events;
	// 8 rows edited in ScheduleHub. 21 rows to publish; the quota is 20 a night.
	if _, err := erp.Drift(sim.DriftConfig{Entity: "items", Create: 4, Change: 9, Delete: 3, Seed: 7}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.conn.Exec(r.ctx, `UPDATE schedulehub.items SET description = 'edited' WHERE part_no IN
		(SELECT part_no FROM schedulehub.items ORDER BY part_no LIMIT 8)`); err != nil {
		t.Fatal(err)
	}
	// Before the window the schedule is not even due.
	r.at("2026-11-27T18:59:00Z")
	if res, err := r.runner.RunDue(r.ctx, "items"); err != nil || len(res) != 0 {
		t.Fatalf("before the window: %+v, %v", res, err)
	}
	res := run("2026-11-27T19:30:00Z")
	first := r.newMessages("apismith.backfill.items")
	if res.Published != 20 || len(first) != 20 || res.Completed {
		t.Fatalf("the night after the drift: %+v, %d messages", res, len(first))
	}
	if got := r.query(`SELECT missing, stale, extra, target_edited FROM bridge.verifications ORDER BY started_at DESC LIMIT 1`); got != "4|9|3|8" {
		t.Fatalf("the drift night's counts: %s", got)
	}
	r.applyBodies("items", first)
	res = run("2026-11-28T19:30:00Z")
	second := r.newMessages("apismith.backfill.items")
	if res.Published != 1 || len(second) != 1 {
		t.Fatalf("the next night: %+v, %d messages", res, len(second))
	}
	r.applyBodies("items", second)
	res = run("2026-11-29T19:30:00Z")
	if res.Published != 0 || len(r.newMessages("apismith.backfill.items")) != 0 {
		t.Fatalf("once repaired: %+v", res)
	}
	// A schedule does not delete: the extra rows stay reported.
	if got := r.query(`SELECT missing, stale, extra, target_edited, target_missing FROM bridge.verifications ORDER BY started_at DESC LIMIT 1`); got != "0|0|3|0|0" {
		t.Fatalf("once repaired: %s", got)
	}
	if got := r.query(`SELECT count(*) FROM bridge.verifications WHERE trigger = 'schedule' AND error IS NULL`); got != "4" {
		t.Fatalf("verifications kept: %s", got)
	}
}
