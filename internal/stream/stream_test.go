package stream_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

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
	if _, err := stream.LoadDefinitions(streams.FS, []string{"suppliers"}); err == nil {
		t.Error("an entity without a consumer definition must be an error")
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	_, defs := shipped(t)
	srv := testenv.NATS(t)
	nc, err := stream.Connect(stream.Config{URL: srv.ClientURL()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	for range 2 {
		if err := stream.Apply(ctx, js, defs); err != nil {
			t.Fatal(err)
		}
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
	cat, _ := shipped(t)
	run("stream", "add", "--config", streams.Advisories+".json")
	run("consumer", "add", streams.Advisories, "--config", filepath.Join("consumers", streams.Advisories, streams.AdvisoriesConsumer+".json"))
	for _, s := range []string{event.Realtime.Stream, event.Backfill.Stream} {
		run("stream", "add", "--config", s+".json")
		for _, e := range cat.Names() {
			run("consumer", "add", s, "--config", filepath.Join("consumers", s, e+".json"))
		}
	}
}
