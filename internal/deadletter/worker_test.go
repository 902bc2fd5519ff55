package deadletter_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/storetest"
)

// A round goes on while the sweeps and the retries say there is more.
func TestRoundWorksUntilNothingIsDue(t *testing.T) {
	e := newEnv(t, func(c *deadletter.Config) { c.RoundLimit = 2 })
	e.Apply(t, "work_centers", workCenters(5, 0)...)
	e.Unnoticed(t, "sites", storetest.Site("S1", 1, ""))
	e.Rules = brokenRules(t)
	e.Apply(t, "sites", storetest.Site("S2", 1, "a"), storetest.Site("S3", 1, "b"), storetest.Site("S4", 1, "c"))
	e.Rules = nil
	e.wait(time.Hour)
	w := &deadletter.Worker{DeadLetters: e.DeadLetters, Catalog: catalog.NewLive(e.Catalog), Rules: func() *mapping.Set { return nil }, Replica: "test"}
	if err := w.Round(e.Ctx); err != nil {
		t.Fatal(err)
	}
	check(t, "parked", e.parked(t), nil)
	for _, d := range e.DeadLetterRows(t) {
		if !d.Resolved {
			t.Errorf("unresolved %s", d)
		}
	}
	if got := len(e.TargetRows(t, "work_centers", "work_center_no")) + len(e.TargetRows(t, "sites", "contract")); got != 5+4 {
		t.Errorf("%d rows applied, want 9", got)
	}
}

// advisory is a message JetStream gave up on, and what became of its advisory.
type advisory struct {
	deadletter.GaveUp
	acked, nakked int
}

func gaveUp(seq uint64, found bool) *advisory {
	a := &advisory{GaveUp: deadletter.GaveUp{Consumer: "sites", Deliveries: 8, Found: found,
		Delivery: pipeline.Delivery{Subject: "apismith.cdc.sites", Source: event.Realtime, StreamSeq: seq}}}
	if found {
		a.Delivery.Data = []byte(storetest.Site("S1", 1, "crashes the service"))
	}
	a.Ack = func() error { a.acked++; return nil }
	a.Nak = func() error { a.nakked++; return nil }
	return a
}

var discard = slog.New(slog.DiscardHandler)

// down is a store whose transactions cannot start.
type down struct{ apply.Store }

func (down) InTx(context.Context, func(apply.Tx) error) error {
	return fmt.Errorf("%w: connection refused", apply.ErrUnavailable)
}

func TestGaveUpDrain(t *testing.T) {
	for _, c := range []struct {
		name     string
		down     bool
		reads    [][]*advisory // the advisories of each read
		dead     []string
		reason   string
		ack, nak int // of every advisory
	}{
		{name: "a message JetStream gave up on is dead-lettered, retried by itself",
			reads: [][]*advisory{{gaveUp(7, true)}}, ack: 1,
			dead:   []string{"max_deliver sites S1, retried 0, 0 earlier, next in 1h0m0s"},
			reason: "JetStream stopped delivering this message to consumer sites after 8 attempts"},
		{name: "an advisory read twice makes one dead letter",
			reads: [][]*advisory{{gaveUp(7, true)}, {gaveUp(7, true)}}, ack: 1,
			dead: []string{"max_deliver sites S1, retried 0, 1 earlier, next in 1h0m0s"}},
		{name: "a message the stream no longer holds is dead-lettered without its bytes",
			reads: [][]*advisory{{gaveUp(7, false)}}, ack: 1,
			dead:   []string{"max_deliver sites, retried 0, 0 earlier, next in 1h0m0s"},
			reason: "the stream no longer holds it, so its bytes are lost"},
		{name: "advisories that cannot be recorded are asked for again",
			down: true, reads: [][]*advisory{{gaveUp(7, true), gaveUp(8, true)}}, nak: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, nil)
			ap := e.Applier
			if c.down {
				var err error
				if ap, err = apply.NewApplier(down{e.ApplyStore()}, e.Config.Stamp(apply.Config{})); err != nil {
					t.Fatal(err)
				}
			}
			d := &deadletter.GaveUpDrain{Applier: ap, Catalog: catalog.NewLive(e.Catalog), Logger: discard}
			for _, read := range c.reads {
				gave := make([]deadletter.GaveUp, len(read))
				for i, a := range read {
					gave[i] = a.GaveUp
				}
				err := d.Record(e.Ctx, gave)
				if c.down != (err != nil) || c.down && !errors.Is(err, apply.ErrUnavailable) {
					t.Fatalf("Record: %v", err)
				}
				for _, a := range read {
					if a.acked != c.ack || a.nakked != c.nak {
						t.Errorf("advisory of #%d: acked %d, nakked %d; want %d, %d", a.Delivery.StreamSeq, a.acked, a.nakked, c.ack, c.nak)
					}
				}
			}
			check(t, "dead letters", e.dead(t), c.dead)
			if c.reason != "" {
				if rows := e.DeadLetterRows(t); len(rows) != 1 || !strings.Contains(rows[0].Error, c.reason) {
					t.Errorf("dead letters %v, want a reason that says %q", rows, c.reason)
				}
			}
		})
	}
}
