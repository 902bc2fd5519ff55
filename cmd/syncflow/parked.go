package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/syncflow/syncflow/internal/store"
)

func parkedCmd(ctx context.Context, args []string) error {
	var (
		c           common
		defs        definitions
		entity, age string
		asJSON, all bool
		limit       int
	)
	f := newFlags("parked", "parked [flags] list | release [UID... | --all] | expire [UID... | --older-than D | --all]")
	c.register(f)
	defs.register(f)
	f.StringVar(&entity, "entity", "", "list: only this child entity")
	f.IntVar(&limit, "limit", 100, "list: at most this many")
	f.BoolVar(&asJSON, "json", false, "list: JSON for scripts")
	f.BoolVar(&all, "all", false, "release, expire: every parked child")
	f.StringVar(&age, "older-than", "", "expire: children parked longer ago than this (e.g. 2d)")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() == 0 {
		return fmt.Errorf("%w: say what to do: list, release or expire (see --help)", errUsage)
	}
	action, rest := f.Arg(0), f.Args()[1:]
	switch action {
	case "list":
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
		if err != nil {
			return err
		}
		defer st.Close()
		list, err := st.ListParked(ctx, entity, limit)
		if err != nil {
			return err
		}
		if asJSON {
			if list == nil {
				list = []store.ParkedInfo{}
			}
			return printJSON(list)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "UID\tCHILD\tWAITS FOR\tPARENT KEY\tAGE\tRE-CHECKS\tNEXT RE-CHECK")
		for _, p := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", p.UID, p.Child, p.Parent, p.ParentKey, ago(p.CreatedAt), p.RetryCount, p.MaxRetries, p.NextRetryAt.UTC().Format("2006-01-02 15:04:05"))
		}
		if len(list) == 0 {
			fmt.Fprintln(tw, "(no children are waiting for their parents)")
		}
		return tw.Flush()
	case "release", "expire":
		sel := store.ParkedSelection{All: all, Expire: action == "expire"}
		if age != "" {
			if action != "expire" {
				return fmt.Errorf("%w: --older-than goes with expire", errUsage)
			}
			d, err := parseAge(age)
			if err != nil {
				return err
			}
			sel.OlderThan = d
		}
		uids, err := parseUIDs(rest)
		if err != nil {
			return err
		}
		sel.UIDs = uids
		if len(uids) == 0 && !all && sel.OlderThan == 0 {
			return fmt.Errorf("%w: say which parked children: UIDs or --all (expire also takes --older-than D)", errUsage)
		}
		wb, err := openWorkbench(ctx, c, defs)
		if err != nil {
			return err
		}
		defer wb.Close()
		if len(uids) > 0 {
			found, err := wb.st.ParkedUIDs(ctx, uids)
			if err != nil {
				return err
			}
			if len(found) < len(uids) {
				have := map[string]bool{}
				for _, u := range found {
					have[u.String()] = true
				}
				var missing []string
				for _, u := range uids {
					if !have[u.String()] {
						missing = append(missing, u.String())
					}
				}
				return fmt.Errorf("%w: no parked child %s (see `syncflow parked list`)", errNotFound, strings.Join(missing, ", "))
			}
		}
		var total store.SweepResult
		for {
			res, err := wb.st.SweepParked(ctx, wb.cat, wb.rules, "cli", sel)
			if err != nil {
				return err
			}
			total.Examined += res.Examined
			total.Released += res.Released
			total.Orphaned += res.Orphaned
			total.Waiting += res.Waiting
			// Selections by UID are one round; --all and --older-than go on while
			// rows are released or expired (waiting rows would come back forever).
			if len(uids) > 0 || res.Examined < 500 || res.Released+res.Orphaned == 0 {
				break
			}
		}
		fmt.Printf("re-checked %d parked children: %d released, %d expired to dead letters (orphan), %d still waiting\n",
			total.Examined, total.Released, total.Orphaned, total.Waiting)
		return nil
	}
	return fmt.Errorf("%w: unknown parked action %q: use list, release or expire", errUsage, action)
}
