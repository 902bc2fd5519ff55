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

	"github.com/syncflow/syncflow/internal/redact"
)

// errUsage marks a mistake on the command line: exit code 2.
var errUsage = errors.New("usage")

// errNotFound marks a UID, name or filter that matches nothing known: exit code 3.
var errNotFound = errors.New("not found")

func main() {
	args := os.Args[1:]
	switch {
	case len(args) == 0:
		usage(os.Stderr)
		os.Exit(2)
	case args[0] == "-h" || args[0] == "--help" || args[0] == "-help" || args[0] == "help":
		usage(os.Stdout)
		return
	case args[0] == "--version" || args[0] == "-version":
		args = []string{"version"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, name, err := prepare(args)
	if err == nil {
		err = p.run(ctx, p.args)
	}
	if err == nil || errors.Is(err, errHelp) {
		return
	}
	// Whatever failed, its message passes through redact: a driver's error may
	// quote a URL or a password.
	fmt.Fprintf(os.Stderr, "syncflow %s: %s\n", name, redact.String(err.Error()))
	switch {
	case errors.Is(err, errUsage):
		os.Exit(2)
	case errors.Is(err, errNotFound):
		os.Exit(3)
	case errors.Is(err, errDrift):
		os.Exit(4)
	}
	os.Exit(1)
}
