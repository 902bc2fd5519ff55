// Command syncflow keeps ScheduleHub in sync with the IFS ERP: it consumes APISmith's
// change events from NATS JetStream and writes them into PostgreSQL.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) error
}

var commands = []command{
	{"run", "consume change events and write them to ScheduleHub (the service)", runCmd},
	{"migrate", "apply or inspect the bridge schema migrations: up | down [N] | version | force V", migrateCmd},
	{"streams", "create or update the JetStream streams and consumers: apply", streamsCmd},
	{"mappings", "field-mapping rules: list | export | import FILE (CSV or JSON)", mappingsCmd},
	{"dlq", "dead letters: list | show UID | retry | resolve UID | purge", dlqCmd},
	{"parked", "children waiting for their parents: list | release | expire", parkedCmd},
	{"replay", "re-deliver a time or sequence range of an entity through the pipeline", replayCmd},
	{"backfill", "publish the due nightly backfills from APISmith (--once for cron)", backfillCmd},
	{"schedule", "backfill schedules: list | set ENTITY | enable | disable | reset", scheduleCmd},
	{"status", "per entity: checkpoint, last batch, pending, dead letters, parked, backfill", statusCmd},
	{"prune", "remove old batches and resolved dead letters: --older-than 90d", pruneCmd},
}

func usage() {
	fmt.Fprint(os.Stderr, "syncflow keeps ScheduleHub in sync with the IFS ERP through NATS JetStream.\n\nUsage: syncflow COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(os.Stderr, "\nRun `syncflow COMMAND --help` for a command's flags. A flag whose help names a\n$SYNCFLOW_* variable can also be set from the environment; the flag wins.\n\nExit codes: 0 success, 1 failure, 2 a mistake on the command line, 3 a UID or name\nthat matches nothing.\n")
}

// errUsage marks a mistake on the command line: exit code 2.
var errUsage = errors.New("usage")

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands {
		if c.name == os.Args[1] {
			err := c.run(ctx, os.Args[2:])
			switch {
			case err == nil:
				return
			case errors.Is(err, errUsage):
				fmt.Fprintf(os.Stderr, "syncflow %s: %v\n", c.name, err)
				os.Exit(2)
			case errors.Is(err, errNotFound):
				fmt.Fprintf(os.Stderr, "syncflow %s: %v\n", c.name, err)
				os.Exit(3)
			default:
				fmt.Fprintf(os.Stderr, "syncflow %s: %v\n", c.name, err)
				os.Exit(1)
			}
		}
	}
	fmt.Fprintf(os.Stderr, "syncflow: unknown command %q\n\n", os.Args[1])
	usage()
	os.Exit(2)
}
