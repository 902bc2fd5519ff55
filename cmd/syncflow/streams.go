package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/stream"
)

func streamsCommands() []command {
	return []command{{path: "streams apply", summary: "create or update the streams and their durable consumers (idempotent; needs an admin NATS user)", setup: func(f *flags) runFunc {
		var (
			l    logging
			n    natsFlags
			defs definitions
		)
		l.register(f)
		n.register(f)
		defs.register(f)
		return func(ctx context.Context, _ []string) error { return applyStreams(ctx, l, n, defs) }
	}}}
}

func applyStreams(ctx context.Context, l logging, n natsFlags, defs definitions) error {
	log, err := l.logger(os.Stderr)
	if err != nil {
		return err
	}
	cat, err := defs.catalog()
	if err != nil {
		return err
	}
	d, err := defs.streams(cat)
	if err != nil {
		return err
	}
	n.cfg.Name, n.cfg.Logger = "syncflow-streams", log
	nc, err := stream.Connect(n.cfg)
	if err != nil {
		return fmt.Errorf("%w (is NATS running? see the README's setup)", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := stream.Apply(ctx, js, d); err != nil {
		return err
	}
	for _, s := range slices.Sorted(maps.Keys(d.Streams)) {
		fmt.Printf("stream %s: %d consumers\n", s, len(d.Consumers[s]))
	}
	return nil
}
