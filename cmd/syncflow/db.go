package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/syncflow/syncflow/internal/store"
)

func dbCommands() []command {
	return []command{
		{path: "db gin", args: "enable|disable", minArgs: 1, maxArgs: 1,
			summary: "create or drop the GIN index on the dead letters' events, for dlq --match (run as the schema owner)", setup: setupDBGin},
	}
}

func setupDBGin(f *flags) runFunc {
	var c common
	c.register(f)
	return func(ctx context.Context, args []string) error {
		action := args[0]
		if action != "enable" && action != "disable" {
			return fmt.Errorf("%w: `syncflow db gin` takes enable or disable, got %q", errUsage, action)
		}
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
		if err != nil {
			return err
		}
		defer st.Close()
		if action == "disable" {
			existed, err := st.DisableGIN(ctx, 2*time.Second)
			if err != nil {
				return ginError(err)
			}
			if !existed {
				fmt.Println("there was no GIN index on the dead letters' events: nothing to do")
				return nil
			}
			fmt.Println("dropped the GIN index on the dead letters' events; dlq --match now scans them")
			return nil
		}
		began := time.Now()
		err = st.EnableGIN(ctx, func(part string) { fmt.Fprintf(os.Stderr, "indexing %s\n", part) })
		if err != nil {
			return ginError(err)
		}
		fmt.Printf("the GIN index on the dead letters' events is built (%s); dlq --match uses it\n", time.Since(began).Round(time.Millisecond))
		return nil
	}
}

// ginError says what to do about a failed db gin.
func ginError(err error) error {
	switch {
	case errors.Is(err, store.ErrGINBusy):
		return fmt.Errorf("%w: wait for it to finish, then run this again", err)
	case store.IsPermissionDenied(err):
		return fmt.Errorf("%w: creating or dropping an index takes the tables' owner: run this with the URL of the role that runs `syncflow migrate`", err)
	}
	return fmt.Errorf("%w (run it again: a part built already is kept, one left half-built is built again)", err)
}
