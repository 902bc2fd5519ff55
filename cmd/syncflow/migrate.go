package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/term"

	"github.com/syncflow/syncflow/internal/store"
)

func migrateCommands() []command {
	return []command{
		{path: "migrate up", summary: "apply every pending migration", maxArgs: 0, setup: func(f *flags) runFunc {
			var c common
			c.register(f)
			return func(ctx context.Context, _ []string) error { return migrateUp(ctx, c.databaseURL, os.Stdout) }
		}},
		{path: "migrate down", args: "[N]", maxArgs: 1, summary: "revert the last N migrations (all of them without N: asks for --yes)", setup: setupMigrateDown},
		{path: "migrate version", summary: "print the schema version", maxArgs: 0, setup: func(f *flags) runFunc {
			var c common
			c.register(f)
			return func(ctx context.Context, _ []string) error {
				return withMigrator(c, func(*store.Migrator) error { return nil })
			}
		}},
		{path: "migrate force", args: "V", minArgs: 1, maxArgs: 1, summary: "record version V without running migrations (after fixing a failed one by hand)", setup: setupMigrateForce},
	}
}

// migrateUp applies the pending migrations, prints the version they leave to
// out, and stores the built-in catalog in a database that has none.
func migrateUp(ctx context.Context, databaseURL string, out io.Writer) error {
	m, err := store.NewMigrator(databaseURL)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Up(); err != nil {
		return fmt.Errorf("migrate up: %w", err)
	}
	if err := fprintVersion(out, m); err != nil {
		return err
	}
	st, err := store.Open(ctx, store.Config{URL: databaseURL, MaxConns: 1})
	if err != nil {
		return err
	}
	defer st.Close()
	return storeBuiltInCatalog(ctx, st)
}

// withMigrator runs do and prints the version it leaves.
func withMigrator(c common, do func(*store.Migrator) error) error {
	m, err := store.NewMigrator(c.databaseURL)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := do(m); err != nil {
		return err
	}
	return printVersion(m)
}

func printVersion(m *store.Migrator) error { return fprintVersion(os.Stdout, m) }

func fprintVersion(out io.Writer, m *store.Migrator) error {
	v, dirty, applied, err := m.Version()
	if err != nil {
		return err
	}
	switch {
	case !applied:
		fmt.Fprintln(out, "schema version: none (no migration applied)")
	case dirty:
		fmt.Fprintf(out, "schema version: %d (dirty: a migration failed; fix it, then `syncflow migrate force %d`)\n", v, int(v)-1)
	default:
		fmt.Fprintf(out, "schema version: %d\n", v)
	}
	return nil
}

func setupMigrateDown(f *flags) runFunc {
	var (
		c           common
		yes, dryRun bool
	)
	c.register(f)
	f.BoolVar(&yes, "yes", false, "confirm reverting every migration (dropping the bridge schema and everything in it)")
	f.BoolVar(&dryRun, "dry-run", false, "say which migrations would be reverted and what would be dropped; change nothing")
	return func(ctx context.Context, args []string) error {
		all, err := store.Migrations()
		if err != nil {
			return err
		}
		m, err := store.NewMigrator(c.databaseURL)
		if err != nil {
			return err
		}
		defer m.Close()
		v, dirty, applied, err := m.Version()
		if err != nil {
			return err
		}
		if !applied {
			fmt.Println("nothing to revert: no migration is applied")
			return nil
		}
		if dirty {
			return fmt.Errorf("the schema is dirty at version %d (a migration failed half-way): fix the cause and `syncflow migrate force` the version that is really in place first", v)
		}
		var reverting []store.Migration
		for _, mg := range all {
			if mg.Version <= v {
				reverting = append(reverting, mg)
			}
		}
		n := len(reverting)
		if len(args) == 1 {
			if n, err = atoiArg(args[0], "N"); err != nil {
				return err
			}
			if n < 1 {
				return fmt.Errorf("%w: N must be 1 or more (without N, every migration is reverted)", errUsage)
			}
			if n > len(reverting) {
				return fmt.Errorf("%w: only %d migrations are applied; `syncflow migrate down %d` (or without N) reverts them all", errUsage, len(reverting), len(reverting))
			}
		}
		toZero := n == len(reverting)
		reverting = reverting[len(reverting)-n:]
		verb := "reverts"
		if dryRun {
			verb = "would revert"
		}
		names := make([]string, n)
		for i, mg := range reverting {
			names[n-1-i] = mg.String()
		}
		fmt.Printf("migrate down %s %d migrations: %s\n", verb, n, strings.Join(names, ", "))
		if toZero {
			contents, err := store.BridgeContents(ctx, c.databaseURL)
			if err != nil {
				return err
			}
			fmt.Println("It drops the bridge schema and everything in it:")
			for _, t := range contents {
				extra := ""
				if t.Table == "bridge.failed_records" {
					extra = fmt.Sprintf(" (%d unresolved dead letters: for messages past the stream's retention, the only copy)", t.Unresolved)
				}
				fmt.Printf("  %-34s %d rows%s\n", t.Table, t.Rows, extra)
			}
		}
		if dryRun {
			fmt.Println("(dry run: nothing was changed)")
			return nil
		}
		if (toZero || len(args) == 0) && !yes {
			if err := confirm(os.Stdin, os.Stdout, "Type yes to revert them: "); err != nil {
				return err
			}
		}
		if err := m.Down(n); err != nil {
			return err
		}
		return printVersion(m)
	}
}

// confirm asks on a terminal; elsewhere (a script, a pipe) it refuses, because
// nobody is there to answer.
func confirm(in *os.File, out io.Writer, prompt string) error {
	if !term.IsTerminal(int(in.Fd())) {
		return fmt.Errorf("%w: this drops data: add --yes to confirm (see what it drops first with --dry-run)", errUsage)
	}
	fmt.Fprint(out, prompt)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && line == "" {
		return fmt.Errorf("%w: not confirmed, nothing was changed", errUsage)
	}
	if strings.TrimSpace(line) != "yes" {
		return fmt.Errorf("%w: not confirmed (only yes is), nothing was changed", errUsage)
	}
	return nil
}

func setupMigrateForce(f *flags) runFunc {
	var (
		c      common
		dryRun bool
	)
	c.register(f)
	f.BoolVar(&dryRun, "dry-run", false, "say what would be recorded; change nothing")
	return func(ctx context.Context, args []string) error {
		all, err := store.Migrations()
		if err != nil {
			return err
		}
		v, err := strconv.Atoi(args[0])
		known := err == nil && v == -1
		var names []string
		for _, mg := range all {
			names = append(names, fmt.Sprintf("%d (%s)", mg.Version, mg.Name))
			if err == nil && v >= 0 && uint(v) == mg.Version {
				known = true
			}
		}
		if !known {
			return fmt.Errorf("%w: %q is not a migration version: use one of %s, or -1 to record that none is applied", errUsage, args[0], strings.Join(names, ", "))
		}
		m, err := store.NewMigrator(c.databaseURL)
		if err != nil {
			return err
		}
		defer m.Close()
		if dryRun {
			cur, dirty, applied, err := m.Version()
			if err != nil {
				return err
			}
			now := "none"
			if applied {
				now = strconv.FormatUint(uint64(cur), 10)
				if dirty {
					now += " (dirty)"
				}
			}
			fmt.Printf("would record schema version %d (now %s) without running any migration\n(dry run: nothing was changed)\n", v, now)
			return nil
		}
		if err := m.Force(v); err != nil {
			return err
		}
		return printVersion(m)
	}
}
