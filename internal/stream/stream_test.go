package stream_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/testenv"
	"github.com/syncflow/syncflow/streams"
)

func shipped(t *testing.T) (*catalog.Catalog, stream.Definitions) {
	t.Helper()
	return testenv.Shipped(t)
}

// freshJetStream is a JetStream client of an embedded server of the test's own.
func freshJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	return freshJetStreamOf(t, testenv.NATS(t))
}

// freshJetStreamOf is a JetStream client of srv.
func freshJetStreamOf(t *testing.T, srv *stream.Embedded) jetstream.JetStream {
	t.Helper()
	nc, err := stream.Connect(stream.Config{URL: srv.ClientURL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return js
}

// appliedJetStream is freshJetStream with the shipped streams and consumers.
func appliedJetStream(t *testing.T) (jetstream.JetStream, stream.Definitions) {
	t.Helper()
	_, defs := shipped(t)
	js := freshJetStream(t)
	if err := stream.Apply(context.Background(), js, defs); err != nil {
		t.Fatal(err)
	}
	return js, defs
}

func TestShippedDefinitions(t *testing.T) {
	cat, defs := shipped(t)
	prefixes := map[string]string{event.Realtime.Stream: event.Realtime.SubjectPrefix, event.Backfill.Stream: event.Backfill.SubjectPrefix}
	for name, prefix := range prefixes {
		sc := defs.Streams[name]
		if sc.Retention != jetstream.LimitsPolicy || sc.Storage != jetstream.FileStorage || sc.Duplicates == 0 {
			t.Errorf("%s: want limits retention, file storage and a duplicate window: %+v", name, sc)
		}
		if len(sc.Subjects) != 1 || sc.Subjects[0] != prefix+">" {
			t.Errorf("%s subjects = %v", name, sc.Subjects)
		}
		for _, e := range cat.Names() {
			cc := defs.Consumers[name][e]
			if cc.FilterSubject != prefix+e || cc.AckPolicy != jetstream.AckExplicitPolicy || cc.MaxAckPending < 1000 {
				t.Errorf("%s consumer for %s: %+v", name, e, cc)
			}
		}
	}
	// A streams directory of an older release, with per-entity consumer files:
	// their settings would be dropped in silence, so loading it is refused.
	legacy := fstest.MapFS{}
	for _, f := range []string{"APISMITH_CDC.json", "APISMITH_BACKFILL.json", "SYNCFLOW_ADVISORIES.json", "consumers/SYNCFLOW_ADVISORIES/max_deliveries.json"} {
		data, err := fs.ReadFile(streams.FS, f)
		if err != nil {
			t.Fatal(err)
		}
		legacy[f] = &fstest.MapFile{Data: data}
	}
	if _, err := stream.LoadDefinitions(legacy, cat); err != nil {
		t.Fatalf("stream files alone: %v", err)
	}
	legacy["consumers/APISMITH_CDC/items.json"] = &fstest.MapFile{Data: []byte(`{"durable_name":"syncflow_cdc_items","ack_policy":"explicit","max_ack_pending":20000}`)}
	_, err := stream.LoadDefinitions(legacy, cat)
	if err == nil || !strings.Contains(err.Error(), "consumers/APISMITH_CDC/items.json: consumer files are no longer read; put their settings in the catalog") {
		t.Errorf("a per-entity consumer file: %v, want an error that says where its settings go", err)
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	_, defs := shipped(t)
	js := freshJetStream(t)
	ctx := context.Background()
	for range 2 {
		if err := stream.Apply(ctx, js, defs); err != nil {
			t.Fatal(err)
		}
	}
	plan, err := stream.PlanChanges(ctx, js, defs, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) == 0 || plan.Count(stream.Unchanged) != len(plan) {
		t.Errorf("after apply, the plan changes something: %+v", plan)
	}
	for name, consumers := range defs.Consumers {
		for _, cc := range consumers {
			info, err := js.Consumer(ctx, name, cc.Durable)
			if err != nil {
				t.Fatalf("consumer %s on %s: %v", cc.Durable, name, err)
			}
			if got := info.CachedInfo().Config.FilterSubject; got != cc.FilterSubject {
				t.Errorf("%s filter = %s", cc.Durable, got)
			}
		}
	}
}

// relayedJetStream is a JetStream client of srv whose API requests go through
// answer, which gets each request's API subject (STREAM.CREATE.X, ...) and a
// function that sends it on to the server, and returns the reply to give, or
// nil to give none.
func relayedJetStream(t *testing.T, srv *stream.Embedded, answer func(api string, send func() []byte) []byte) jetstream.JetStream {
	t.Helper()
	connect := func() *nats.Conn {
		nc, err := stream.Connect(stream.Config{URL: srv.ClientURL()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	relay := connect()
	sub, err := relay.Subscribe("RELAY.API.>", func(m *nats.Msg) {
		api := strings.TrimPrefix(m.Subject, "RELAY.API.")
		send := func() []byte {
			resp, err := relay.Request("$JS.API."+api, m.Data, 5*time.Second)
			if err != nil {
				return nil
			}
			return resp.Data
		}
		if reply := answer(api, send); reply != nil {
			_ = m.Respond(reply)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	js, err := jetstream.NewWithAPIPrefix(connect(), "RELAY.API", jetstream.WithDefaultTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// A busy cluster answers a create later than the client waits (five seconds by
// default): apply tries again instead of failing. Here every first create of a
// stream or consumer is carried out by the server but its answer is lost, the
// worst case, since the retry then finds the thing it was creating.
func TestApplyRidesOutUnansweredCreates(t *testing.T) {
	_, defs := shipped(t)
	srv := testenv.NATS(t)
	var mu sync.Mutex
	answered := map[string]bool{}
	dropped := 0
	js := relayedJetStream(t, srv, func(api string, send func() []byte) []byte {
		reply := send()
		if strings.HasPrefix(api, "STREAM.CREATE.") || strings.HasPrefix(api, "CONSUMER.CREATE.") {
			mu.Lock()
			defer mu.Unlock()
			if !answered[api] {
				answered[api] = true
				dropped++
				return nil
			}
		}
		return reply
	})
	ctx := context.Background()
	if err := stream.Apply(ctx, js, defs); err != nil {
		t.Fatalf("apply with every first create unanswered: %v", err)
	}
	consumers := 0
	for _, cs := range defs.Consumers {
		consumers += len(cs)
	}
	// The streams, the advisory stream, their consumers and the advisory consumer.
	if want := len(defs.Streams) + 1 + consumers + 1; dropped != want {
		t.Errorf("%d answers dropped, want one per stream and consumer (%d)", dropped, want)
	}
	plan, err := stream.PlanChanges(ctx, freshJetStreamOf(t, srv), defs, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) == 0 || plan.Count(stream.Unchanged) != len(plan) {
		t.Errorf("after apply, the plan changes something: %+v", plan)
	}
}

// Stopped while it tries a create again (the service's shutdown during
// `run --apply-streams`), apply says it was stopped, which the service takes
// for a clean stop, not for the last try's error: with a consumer the server
// refuses for now (a stream being scaled up) and with one it never answers.
func TestApplyStoppedWhileTryingAgain(t *testing.T) {
	_, defs := shipped(t)
	for _, mode := range []string{"refused for now", "never answered"} {
		t.Run(mode, func(t *testing.T) {
			js := relayedJetStream(t, testenv.NATS(t), func(api string, send func() []byte) []byte {
				if !strings.HasPrefix(api, "CONSUMER.CREATE.") {
					return send()
				}
				if mode == "refused for now" {
					return []byte(`{"type":"io.nats.jetstream.api.v1.consumer_create_response","error":{"code":400,"err_code":10126,"description":"consumer replicas exceeds stream"}}`)
				}
				return nil
			})
			for i := range 3 {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(400*time.Millisecond+time.Duration(i)*37*time.Millisecond, cancel)
				err := stream.Apply(ctx, js, defs)
				cancel()
				if !errors.Is(err, context.Canceled) {
					t.Errorf("try %d: apply stopped: %v, want context.Canceled", i, err)
				}
			}
		})
	}
}

// The files in streams/ are what the nats CLI accepts as they are.
func TestDefinitionsAcceptedByNatsCLI(t *testing.T) {
	cli := testenv.NatsCLI(t)
	srv := testenv.NATS(t)
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(cli, append([]string{"--server", srv.ClientURL()}, args...)...)
		cmd.Dir = "../../streams"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nats %v: %v\n%s", args, err, out)
		}
	}
	cat, defs := shipped(t)
	dir, _ := filepath.Abs(t.TempDir())
	run("stream", "add", "--config", streams.Advisories+".json")
	run("consumer", "add", streams.Advisories, "--config", filepath.Join("consumers", streams.Advisories, streams.AdvisoriesConsumer+".json"))
	for _, s := range []string{event.Realtime.Stream, event.Backfill.Stream} {
		run("stream", "add", "--config", s+".json")
		// The consumers SyncFlow builds from the catalog, as JSON.
		for _, e := range cat.Names() {
			data, err := json.Marshal(defs.Consumers[s][e])
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, s+"-"+e+".json")
			if err := os.WriteFile(file, data, 0o600); err != nil {
				t.Fatal(err)
			}
			run("consumer", "add", s, "--config", file)
		}
	}
}

// A plan says what applying would change; with prune it deletes SyncFlow's
// consumers of entities that left the catalog and of stray subjects an entity
// now owns, and never a consumer SyncFlow did not create.
func TestPlanPrunes(t *testing.T) {
	js := freshJetStream(t)
	ctx := context.Background()
	load := func(yaml string) stream.Definitions {
		t.Helper()
		cat, err := catalog.Parse([]byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		defs, err := stream.LoadDefinitions(streams.FS, cat)
		if err != nil {
			t.Fatal(err)
		}
		return defs
	}
	const sites = "  sites: {key: [CONTRACT], target: {table: schedulehub.sites, key: [contract]}}\n"
	const items = "  items: {key: [PART_NO], target: {table: schedulehub.items, key: [part_no]}}\n"
	const routings = "  routings: {key: [ROUTING_NO], parents: [{entity: sites, fields: [CONTRACT]}], target: {table: schedulehub.routings, key: [routing_no]}}\n"
	before := load("entities:\n" + sites + items)
	if err := stream.Apply(ctx, js, before); err != nil {
		t.Fatal(err)
	}
	// Three items events, of which the items consumer acknowledges the first two.
	for i := range 3 {
		if _, err := js.Publish(ctx, "apismith.cdc.items", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	itemsConsumer, err := js.Consumer(ctx, event.Realtime.Stream, "syncflow_cdc_items")
	if err != nil {
		t.Fatal(err)
	}
	batch, err := itemsConsumer.Fetch(2)
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Someone's own consumer, and a stray consumer for routings' subject, made
	// while routings was not in the catalog.
	for _, cc := range []jetstream.ConsumerConfig{
		{Durable: "ops_tap", FilterSubject: "apismith.cdc.items", AckPolicy: jetstream.AckExplicitPolicy},
		{Durable: "syncflow_realtime_stray_0123456789abcdef", FilterSubject: "apismith.cdc.routings", AckPolicy: jetstream.AckExplicitPolicy},
	} {
		if _, err := js.CreateOrUpdateConsumer(ctx, event.Realtime.Stream, cc); err != nil {
			t.Fatal(err)
		}
	}
	after := load("consumers: {realtime: {ack_wait: 90s}}\nentities:\n" + sites + routings)
	plan, err := stream.PlanChanges(ctx, js, after, true)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range plan {
		if c.Consumer != "" {
			got[c.Stream+" "+c.Consumer] = c.Action + " " + strings.Join(c.Diff, "; ")
		}
	}
	want := map[string]string{
		"APISMITH_CDC syncflow_cdc_sites":                       "update ack_wait 1m0s -> 1m30s",
		"APISMITH_CDC syncflow_cdc_routings":                    "create ",
		"APISMITH_CDC syncflow_cdc_items":                       "delete entity items is not in the catalog",
		"APISMITH_CDC syncflow_realtime_stray_0123456789abcdef": "delete read the stray subject apismith.cdc.routings, which entity routings now owns",
		"APISMITH_BACKFILL syncflow_backfill_sites":             "unchanged ",
		"APISMITH_BACKFILL syncflow_backfill_routings":          "create ",
		"APISMITH_BACKFILL syncflow_backfill_items":             "delete entity items is not in the catalog",
		"SYNCFLOW_ADVISORIES syncflow_max_deliveries":           "unchanged ",
	}
	if !maps.Equal(got, want) {
		t.Errorf("plan:\n got %v\nwant %v", got, want)
	}
	if err := plan.Carry(ctx, js, after); err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, s := range []string{event.Realtime.Stream, event.Backfill.Stream} {
		st, _ := js.Stream(ctx, s)
		names := st.ConsumerNames(ctx)
		for n := range names.Name() {
			left = append(left, n)
		}
	}
	slices.Sort(left)
	// items' consumers handed their subjects over to stray consumers.
	if want := []string{"ops_tap", "syncflow_backfill_routings", "syncflow_backfill_sites", "syncflow_backfill_stray_b95b5399bc081930",
		"syncflow_cdc_routings", "syncflow_cdc_sites", "syncflow_realtime_stray_e973740489981f9a"}; !slices.Equal(left, want) {
		t.Errorf("consumers after the plan: %v, want %v", left, want)
	}
	// The realtime one starts after what the items consumer acknowledged: only
	// the third event is read again (and dead-lettered by the service).
	stray, err := js.Consumer(ctx, event.Realtime.Stream, "syncflow_realtime_stray_e973740489981f9a")
	if err != nil {
		t.Fatal(err)
	}
	if cfg := stray.CachedInfo().Config; cfg.FilterSubject != "apismith.cdc.items" || cfg.DeliverPolicy != jetstream.DeliverByStartSequencePolicy || cfg.OptStartSeq != 3 {
		t.Errorf("the stray consumer of items starts at %v %d on %s, want sequence 3", cfg.DeliverPolicy, cfg.OptStartSeq, cfg.FilterSubject)
	}
	if n := stray.CachedInfo().NumPending; n != 1 {
		t.Errorf("the stray consumer of items has %d to read, want the one unacknowledged event", n)
	}
	again, err := stream.PlanChanges(ctx, js, after, true)
	if err != nil || again.Count(stream.Unchanged) != len(again) {
		t.Errorf("a second plan is not empty: %+v %v", again, err)
	}
}
