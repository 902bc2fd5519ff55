package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/syncflow/syncflow/internal/store"
)

func driftCommands() []command {
	return []command{{path: "drift", maxArgs: 0, summary: "list the event fields no mapping rule maps and no target column takes, with first and last seen and a sample value", setup: func(f *flags) runFunc {
		var (
			c      common
			defs   definitions
			entity string
			asJSON bool
		)
		c.register(f)
		defs.register(f)
		f.StringVar(&entity, "entity", "", "only this entity's fields")
		f.BoolVar(&asJSON, "json", false, "JSON for scripts")
		return func(ctx context.Context, _ []string) error {
			st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
			if err != nil {
				return err
			}
			defer st.Close()
			cat, err := defs.catalogIn(ctx, st)
			if err != nil {
				return err
			}
			if entity != "" {
				if err := knownEntity(cat, entity); err != nil {
					return err
				}
			}
			fields, err := st.UnmappedFields(ctx, entity)
			if err != nil {
				return err
			}
			// A field taken since it was seen (a rule, or a column added) is
			// said so: the listing is history.
			report, err := st.CompareTargets(ctx, cat)
			if err != nil {
				return err
			}
			untaken := map[[2]string]bool{}
			for _, t := range report {
				for _, f := range t.ObservedUnmapped {
					untaken[[2]string{t.Entity, f}] = true
				}
			}
			type row struct {
				store.UnmappedField
				TakenNow bool `json:"taken_now"`
			}
			rows := make([]row, len(fields))
			for i, f := range fields {
				_, known := cat.Entity(f.Entity)
				rows[i] = row{f, known && f.Field != store.OtherField && !untaken[[2]string{f.Entity, f.Field}]}
			}
			if asJSON {
				return printJSON(rows)
			}
			if len(rows) == 0 {
				fmt.Println("no unmapped fields seen: every field of every event was mapped or taken by a column")
				return nil
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ENTITY\tFIELD\tSEEN\tFIRST SEEN\tLAST SEEN\tSAMPLE\tNOW")
			for _, r := range rows {
				sample := "-"
				if r.Sample != nil {
					sample = clip(strings.ReplaceAll(*r.Sample, "\n", " "), 40)
				}
				now := "not taken"
				if r.TakenNow {
					now = "taken now"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Entity, r.Field, r.Count,
					r.FirstSeen.UTC().Format(time.RFC3339), r.LastSeen.UTC().Format(time.RFC3339), sample, now)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Println("map a field with `syncflow mappings import`, or add its column (ALTER TABLE, then `syncflow catalog refresh`)")
			return nil
		}
	}}}
}
