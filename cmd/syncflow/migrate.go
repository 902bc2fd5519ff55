package main

import (
	"context"
	"fmt"
	"os"

	"github.com/syncflow/syncflow/internal/store"
)

func migrateCmd(_ context.Context, args []string) error {
	var c common
	f := newFlags("migrate", "migrate [flags] up | down [N] | version | force V")
	c.register(f)
	if err := f.parse(args); err != nil {
		return err
	}
	rest := f.Args()
	if len(rest) == 0 {
		return fmt.Errorf("%w: say what to do: up, down [N], version or force V", errUsage)
	}
	m, err := store.NewMigrator(c.databaseURL)
	if err != nil {
		return err
	}
	defer m.Close()
	switch rest[0] {
	case "up":
		if err := m.Up(); err != nil {
			return err
		}
	case "down":
		n := 0
		if len(rest) > 1 {
			if n, err = atoiArg(rest[1], "N"); err != nil {
				return err
			}
		}
		if err := m.Down(n); err != nil {
			return err
		}
	case "version":
	case "force":
		if len(rest) < 2 {
			return fmt.Errorf("%w: force needs the version to record, e.g. `syncflow migrate force 1`", errUsage)
		}
		v, err := atoiArg(rest[1], "V")
		if err != nil {
			return err
		}
		if err := m.Force(v); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: unknown migrate action %q: use up, down [N], version or force V", errUsage, rest[0])
	}
	v, dirty, applied, err := m.Version()
	if err != nil {
		return err
	}
	switch {
	case !applied:
		fmt.Fprintln(os.Stdout, "schema version: none (no migration applied)")
	case dirty:
		fmt.Fprintf(os.Stdout, "schema version: %d (dirty: a migration failed; fix it, then `syncflow migrate force %d`)\n", v, v-1)
	default:
		fmt.Fprintf(os.Stdout, "schema version: %d\n", v)
	}
	return nil
}
