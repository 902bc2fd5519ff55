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

func streamsCmd(ctx context.Context, args []string) error {
	var (
		c    common
		n    natsFlags
		defs definitions
	)
	f := newFlags("streams", "streams [flags] apply")
	c.register(f)
	n.register(f)
	defs.register(f)
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() != 1 || f.Arg(0) != "apply" {
		return fmt.Errorf("%w: the only action is `syncflow streams apply`", errUsage)
	}
	log, err := c.logger(os.Stderr)
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
