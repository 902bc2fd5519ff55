package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/stream"
)

func streamsCommands() []command {
	return []command{{path: "streams apply", summary: "create or update the streams and every catalog entity's durable consumers (idempotent; needs an admin NATS user)", setup: func(f *flags) runFunc {
		var (
			c        common
			n        natsFlags
			defs     definitions
			prune    bool
			dryRun   bool
			asJSON   bool
			replicas int
		)
		c.register(f)
		n.register(f)
		defs.register(f)
		f.BoolVar(&prune, "prune", false, "also delete SyncFlow's consumers of entities no longer in the catalog, and of stray subjects an entity now owns")
		f.BoolVar(&dryRun, "dry-run", false, "show the plan; change nothing")
		f.BoolVar(&asJSON, "json", false, "print the plan as JSON")
		f.int(&replicas, "replicas", 1, "servers each stream is stored on (3 for a clustered JetStream)")
		return func(ctx context.Context, _ []string) error {
			if replicas < 1 || replicas > 5 {
				return fmt.Errorf("%w: --replicas %d: a stream is stored on 1 to 5 servers (1 for a single server, 3 for a cluster)", errUsage, replicas)
			}
			return applyStreams(ctx, c, n, defs, replicas, prune, dryRun, asJSON)
		}
	}}}
}

func applyStreams(ctx context.Context, c common, n natsFlags, defs definitions, replicas int, prune, dryRun, asJSON bool) error {
	log, err := c.logger(os.Stderr)
	if err != nil {
		return err
	}
	cat, err := defs.catalog(ctx, c.databaseURL)
	if err != nil {
		return err
	}
	d, err := defs.streams(cat)
	if err != nil {
		return err
	}
	d = d.WithReplicas(replicas)
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
	if replicas > 1 && nc.ConnectedClusterName() == "" {
		return fmt.Errorf("%w: --replicas %d: this NATS server is not part of a JetStream cluster, so it keeps one copy of a stream: use --replicas 1", errUsage, replicas)
	}
	plan, err := stream.PlanChanges(ctx, js, d, prune)
	if err != nil {
		return err
	}
	if asJSON {
		if err := printJSON(plan); err != nil {
			return err
		}
	} else {
		printPlan(plan)
	}
	if dryRun {
		if !asJSON {
			fmt.Println("dry run: nothing changed")
		}
		return nil
	}
	if err := plan.Carry(ctx, js, d); err != nil {
		return err
	}
	if !asJSON {
		fmt.Printf("applied: %d created, %d updated, %d deleted, %d unchanged\n",
			plan.Count(stream.Create), plan.Count(stream.Update), plan.Count(stream.Delete), plan.Count(stream.Unchanged))
	}
	return nil
}

// printPlan prints one line per stream and consumer, what applying does to it.
func printPlan(plan stream.Plan) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTION\tSTREAM\tCONSUMER\tENTITY\tWHAT")
	for _, c := range plan {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Action, c.Stream, cmp.Or(c.Consumer, "-"), cmp.Or(c.Entity, "-"), strings.Join(c.Diff, "; "))
	}
	tw.Flush()
}
