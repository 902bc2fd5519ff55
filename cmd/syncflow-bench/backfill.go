package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/backfill"
	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/sim"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
)

// serveSim serves a simulated ERP of n items over HTTP on a free local port:
// its base URL, and how to stop it.
func serveSim(n int64) (*sim.ERP, string, func(), error) {
	erp := sim.New(sim.Config{Items: n})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	srv := &http.Server{Handler: erp.Handler(sim.ServerConfig{})}
	go srv.Serve(ln)
	return erp, "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

type backfillFigure struct {
	rows     int64
	rate     float64
	p50, p99 time.Duration
}

// backfillRun backfills items from the simulator over HTTP through the running
// service, while realtime events arrive at 100/s, and measures rows/s from source
// to target and the realtime latency meanwhile.
func (b *bench) backfillRun() (backfillFigure, error) {
	fig := backfillFigure{rows: b.cfg.backfillRows}
	if err := b.reset(); err != nil {
		return fig, err
	}
	_, addr, stop, err := serveSim(b.cfg.backfillRows)
	if err != nil {
		return fig, err
	}
	defer stop()

	var mu sync.Mutex
	var lat []time.Duration
	var backfilled atomic.Int64
	onCommit := func(_ string, src event.Source, msgs []pipeline.Message, res apply.Result) {
		if src == event.Backfill {
			backfilled.Add(res.Counts.Fetched)
			return
		}
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			lat = append(lat, now.Sub(m.Delivery.Published))
		}
	}
	st, err := store.Open(b.ctx, store.Config{URL: b.dbURL})
	if err != nil {
		return fig, err
	}
	defer st.Close()
	now := time.Now().UTC()
	window := now.Add(-time.Hour).Format("15:04") + "-" + now.Add(3*time.Hour).Format("15:04")
	days, page := 1, 1000
	start, end, _ := backfill.ParseWindow(window)
	ws, we := start.String(), end.String()
	if err := st.SetSchedule(b.ctx, "items", backfill.Settings{WindowStart: &ws, WindowEnd: &we, Days: &days, PageSize: &page}); err != nil {
		return fig, err
	}
	if err := st.EnableSchedule(b.ctx, "items", true); err != nil {
		return fig, err
	}
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: benchLogLevel}))
	go func() {
		done <- service.Run(ctx, service.Config{
			DatabaseURL: b.dbURL, NATS: stream.Config{URL: b.srv.ClientURL()}, Catalog: b.cat, Streams: b.defs, Backfill: true,
			Consumer: consumer.Config{Replica: "bench", BatchSize: b.cfg.batch, OnCommit: onCommit}, Logger: quiet,
		})
	}()
	time.Sleep(time.Second)
	runner := &backfill.Runner{Store: st, Source: &backfill.HTTPSource{BaseURL: addr},
		Publisher: &stream.Publisher{JS: b.js}, Catalog: b.cat, Replica: "bench", Logger: quiet}
	began := time.Now()
	runErr := make(chan error, 1)
	var published time.Duration
	go func() {
		_, err := runner.RunDue(b.ctx, "items")
		published = time.Since(began)
		runErr <- err
	}()
	// Realtime traffic at 100/s until the backfill is in the target.
	var sites []benchEvent
	for _, ev := range b.events {
		if ev.entity == "sites" {
			sites = append(sites, ev)
		}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	for i := 0; backfilled.Load() < b.cfg.backfillRows; i++ {
		if time.Since(began) > 10*time.Minute {
			cancel()
			return fig, fmt.Errorf("backfill: %d of %d rows after 10 minutes", backfilled.Load(), b.cfg.backfillRows)
		}
		<-tick.C
		if _, err := b.js.PublishAsync("apismith.cdc.sites", sites[i%len(sites)].body, jetstream.WithStallWait(stream.StallWait)); err != nil {
			cancel()
			return fig, err
		}
	}
	tick.Stop()
	elapsed := time.Since(began)
	if err := <-runErr; err != nil {
		cancel()
		return fig, err
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		return fig, err
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	if len(lat) == 0 {
		return fig, fmt.Errorf("backfill: no realtime event committed meanwhile")
	}
	fig.rate = float64(b.cfg.backfillRows) / elapsed.Seconds()
	fig.p50, fig.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	fmt.Printf("  backfill: %d rows published in %v, in the target in %v, %d realtime events meanwhile\n",
		b.cfg.backfillRows, published.Round(time.Millisecond), elapsed.Round(time.Millisecond), len(lat))
	return fig, nil
}

// benchLogLevel is the level of the in-process service's logs (Debug shows every batch).
var benchLogLevel = slog.LevelWarn
