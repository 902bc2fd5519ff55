package service_test

import (
	"context"
	"io/fs"
	"log/slog"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/consumer"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/streams"
)

// A catalog version stored between New and Run: the watcher's first reload
// writes the version in force while Run reads it (the race detector checks).
func TestCatalogVersionReadWhileReloading(t *testing.T) {
	e := newEnv(t, testenvNATS(t))
	st, err := store.Open(e.ctx, store.Config{URL: e.db})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	t.Cleanup(func() { e.conn.Exec(e.ctx, `DELETE FROM bridge.catalog_versions WHERE version > 1`) })
	cfg := service.Config{DatabaseURL: e.db, NATS: stream.Config{URL: e.url}, StreamsFS: streams.FS, ApplyStreams: true,
		Consumer: consumer.Config{Replica: "race", FetchWait: 100 * time.Millisecond}, StrayInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(e.logs, nil))}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	s, err := service.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	builtIn, _ := fs.ReadFile(streams.FS, streams.CatalogFile)
	if _, _, err := st.StoreCatalog(e.ctx, append(builtIn, "\n# v2\n"...), "t", ""); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	e.waitForLog(`msg="catalog version in force" version=2 previous=1`)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
