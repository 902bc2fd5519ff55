package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/store"
)

// parkedFilter holds the flags that choose parked children. Parked children have
// no stage and no error: they wait for a parent, so the parent entity and key
// take the place of --stage and --reason.
type parkedFilter struct {
	entity, parent, parentKey, since, until, age string
}

func (p *parkedFilter) register(f *flags) {
	f.StringVar(&p.entity, "entity", "", "only children of this entity")
	f.StringVar(&p.parent, "parent", "", "only children waiting for a parent of this entity")
	f.StringVar(&p.parentKey, "parent-key", "", `only children waiting for a parent key containing this text (e.g. P-100, or ["S1"])`)
	f.StringVar(&p.since, "since", "", "only children parked since this time (RFC 3339, a date, or a duration back: 24h, 7d)")
	f.StringVar(&p.until, "until", "", "only children parked before this time (the forms of --since)")
	f.StringVar(&p.age, "older-than", "", "only children parked longer ago than this (e.g. 2d)")
}

func (p *parkedFilter) set() bool {
	return p.entity != "" || p.parent != "" || p.parentKey != "" || p.since != "" || p.until != "" || p.age != ""
}

func (p *parkedFilter) describe() string {
	var parts []string
	for _, kv := range [][2]string{{"entity", p.entity}, {"waiting for", p.parent}, {"parent key containing", quoteIf(p.parentKey)},
		{"since", p.since}, {"until", p.until}, {"older than", p.age}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+" "+kv[1])
		}
	}
	return strings.Join(parts, ", ")
}

func (p *parkedFilter) build(cat *catalog.Catalog) (store.ParkedFilter, error) {
	now := time.Now()
	var pf store.ParkedFilter
	var err error
	if pf.Since, err = parseSince(p.since, now); err != nil {
		return pf, err
	}
	if pf.Until, err = parseSince(p.until, now); err != nil {
		return pf, err
	}
	if !pf.Since.IsZero() && !pf.Until.IsZero() && !pf.Since.Before(pf.Until) {
		return pf, fmt.Errorf("%w: --since %s is not before --until %s", errUsage, p.since, p.until)
	}
	if p.age != "" {
		if pf.OlderThan, err = parseAge(p.age); err != nil {
			return pf, err
		}
	}
	for _, name := range []string{p.entity, p.parent} {
		if name != "" {
			if err := knownEntity(cat, name); err != nil {
				return pf, err
			}
		}
	}
	pf.Entity, pf.Parent, pf.ParentKey = p.entity, p.parent, p.parentKey
	return pf, nil
}

func parkedCommands() []command {
	return []command{
		{path: "parked list", summary: "children waiting for their parents, oldest first", setup: setupParkedList},
		{path: "parked release", args: "[UID...]", maxArgs: -1, summary: "re-check parked children now: those whose parent is applied are released", setup: func(f *flags) runFunc {
			return setupParkedAction(f, false)
		}},
		{path: "parked expire", args: "[UID...]", maxArgs: -1, summary: "give up waiting: turn parked children into orphan dead letters (those whose parent is applied are released)", setup: func(f *flags) runFunc {
			return setupParkedAction(f, true)
		}},
	}
}

func setupParkedList(f *flags) runFunc {
	var (
		c    common
		defs definitions
		flt  parkedFilter
		page listing
	)
	c.register(f)
	defs.register(f)
	flt.register(f)
	page.register(f, "parked children")
	return func(ctx context.Context, _ []string) error {
		after, err := page.check()
		if err != nil {
			return err
		}
		st, cat, err := openStore(ctx, c, defs)
		if err != nil {
			return err
		}
		defer st.Close()
		pf, err := flt.build(cat)
		if err != nil {
			return err
		}
		pf.Limit, pf.After = page.limit, after
		if after != uuid.Nil {
			if found, err := st.ParkedUIDs(ctx, store.ParkedFilter{UIDs: []uuid.UUID{after}}); err != nil {
				return err
			} else if len(found) == 0 {
				return fmt.Errorf("%w: no parked child %s (the --after cursor; it may have been released since)", errNotFound, after)
			}
		}
		list, total, err := st.ListParked(ctx, pf)
		if err != nil {
			return err
		}
		if page.asJSON {
			if list == nil {
				list = []store.ParkedInfo{}
			}
			if err := printJSON(list); err != nil {
				return err
			}
		} else if err := parkedTable(list); err != nil {
			return err
		}
		if len(list) > 0 {
			page.footer(len(list), total, list[len(list)-1].UID, "parked children")
		}
		return nil
	}
}

func parkedTable(list []store.ParkedInfo) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UID\tCHILD\tWAITS FOR\tPARENT KEY\tAGE\tRE-CHECKS\tNEXT RE-CHECK")
	for _, p := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", p.UID, p.Child, p.Parent, p.ParentKey, ago(p.CreatedAt), p.RetryCount, p.MaxRetries, p.NextRetryAt.UTC().Format("2006-01-02 15:04:05"))
	}
	if len(list) == 0 {
		fmt.Fprintln(tw, "(no children are waiting for their parents)")
	}
	return tw.Flush()
}

// setupParkedAction is release and expire: they choose parked children by UID,
// by filter or with --all (never by default), say how many they chose, and
// change nothing with --dry-run.
func setupParkedAction(f *flags, expire bool) runFunc {
	var (
		c           common
		defs        definitions
		flt         parkedFilter
		all, dryRun bool
	)
	verb := map[bool]string{false: "release", true: "expire"}[expire]
	c.register(f)
	defs.register(f)
	flt.register(f)
	f.BoolVar(&all, "all", false, "every parked child")
	f.BoolVar(&dryRun, "dry-run", false, "say which parked children would be re-checked; change nothing")
	return func(ctx context.Context, args []string) error {
		uids, err := parseUIDs(args)
		if err != nil {
			return err
		}
		narrowed := len(uids) > 0 || flt.set()
		if !narrowed && !all {
			return fmt.Errorf("%w: say which parked children to %s: UIDs, a filter (--entity, --parent, --parent-key, --since, --until, --older-than) or --all", errUsage, verb)
		}
		if narrowed && all {
			return fmt.Errorf("%w: --all chooses every parked child and cannot go with UIDs or filters: drop --all to narrow the choice, or the filters to take all", errUsage)
		}
		cat, err := defs.catalog(ctx, c.databaseURL)
		if err != nil {
			return err
		}
		pf, err := flt.build(cat)
		if err != nil {
			return err
		}
		pf.UIDs = uids
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
		if err != nil {
			return err
		}
		defer st.Close()
		if len(uids) > 0 {
			found, err := st.ParkedUIDs(ctx, store.ParkedFilter{UIDs: uids})
			if err != nil {
				return err
			}
			if missing := missingUIDs(uids, found); len(missing) > 0 {
				return fmt.Errorf("%w: no parked child %s (see `syncflow parked list`)", errNotFound, strings.Join(missing, ", "))
			}
		}
		counts, err := st.CountParked(ctx, pf)
		if err != nil {
			return err
		}
		var n int64
		var parts []string
		for _, k := range counts {
			n += k.Count
			parts = append(parts, fmt.Sprintf("%s waiting for %s %d", k.Entity, k.Parent, k.Count))
		}
		what := flt.describe()
		if len(uids) > 0 {
			what = strings.TrimPrefix(what+fmt.Sprintf(", %d UIDs", len(uids)), ", ")
		} else if what == "" {
			what = "all"
		}
		if n == 0 {
			if dryRun {
				fmt.Printf("would %s 0 parked children: none matches (%s)\n(dry run: nothing was changed)\n", verb, what)
				return nil
			}
			fmt.Printf("re-checked 0 parked children: none matches (%s)\n", what)
			return nil
		}
		if dryRun {
			consequence := "released if their parent is applied, otherwise they keep waiting"
			if expire {
				consequence = "released if their parent is applied, otherwise turned into orphan dead letters"
			}
			fmt.Printf("would %s %d parked children (%s): %s\nthey would be %s\n", verb, n, what, strings.Join(parts, ", "), consequence)
			preview := pf
			preview.Limit = 10
			list, _, err := st.ListParked(ctx, preview)
			if err != nil {
				return err
			}
			if err := parkedTable(list); err != nil {
				return err
			}
			if n > int64(len(list)) {
				fmt.Printf("... and %d more (see `syncflow parked list` with the same filter)\n", n-int64(len(list)))
			}
			fmt.Println("(dry run: nothing was changed)")
			return nil
		}
		chosen, err := st.ParkedUIDs(ctx, pf)
		if err != nil {
			return err
		}
		st.Close()
		fmt.Printf("%s %d parked children (%s): %s\n", map[bool]string{false: "releasing", true: "expiring"}[expire], len(chosen), what, strings.Join(parts, ", "))
		wb, err := openWorkbench(ctx, c, defs)
		if err != nil {
			return err
		}
		defer wb.Close()
		var total deadletter.SweepResult
		for start := 0; start < len(chosen); start += 500 {
			chunk := chosen[start:min(start+500, len(chosen))]
			res, err := wb.dls.Sweep(ctx, wb.cat, wb.rules, "cli", deadletter.ParkedSelection{UIDs: chunk, Expire: expire})
			if err != nil {
				return fmt.Errorf("after %d re-checked: %w", total.Examined, err)
			}
			total.Examined += res.Examined
			total.Released += res.Released
			total.Orphaned += res.Orphaned
			total.Waiting += res.Waiting
		}
		fmt.Printf("re-checked %d parked children: %d released, %d expired to dead letters (orphan), %d still waiting\n",
			total.Examined, total.Released, total.Orphaned, total.Waiting)
		return nil
	}
}
