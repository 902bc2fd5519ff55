package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/user"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/streams"
)

func catalogCommands() []command {
	return []command{
		{path: "catalog apply", args: "FILE", minArgs: 1, maxArgs: 1, summary: "check a catalog against the live target tables and mapping rules, show its diff, and store it as the newest version (every replica follows it)", setup: setupCatalogApply},
		{path: "catalog check", args: "[FILE]", maxArgs: 1, summary: "check a catalog (the stored one without FILE) against the target tables and mapping rules, table by table; store nothing", setup: setupCatalogCheck},
		{path: "catalog show", maxArgs: 0, summary: "print the stored catalog (--version N: an older one), byte for byte as it was applied", setup: setupCatalogShow},
		{path: "catalog history", maxArgs: 0, summary: "list the stored catalog versions", setup: setupCatalogHistory},
		{path: "catalog refresh", maxArgs: 0, summary: "make every running replica re-read the catalog and its target tables' columns (after ALTER TABLE)", setup: func(f *flags) runFunc {
			var c common
			c.register(f)
			return func(ctx context.Context, _ []string) error {
				st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 1})
				if err != nil {
					return err
				}
				defer st.Close()
				if err := st.RefreshCatalog(ctx); err != nil {
					return err
				}
				fmt.Println("asked every running replica to re-read the catalog and the target tables' columns")
				return nil
			}
		}},
	}
}

func setupCatalogApply(f *flags) runFunc {
	var (
		c      common
		dryRun bool
		note   string
		forget string
	)
	c.register(f)
	f.BoolVar(&dryRun, "dry-run", false, "check and show the diff; store nothing")
	f.StringVar(&note, "note", "", "why this version (kept in the history)")
	f.StringVar(&forget, "forget-versions", "", "comma-separated entities whose key, rowversion form, time zone or target change: delete their ledger rows, so that versions are compared afresh (run a backfill after)")
	return func(ctx context.Context, args []string) error {
		data, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		cat, err := parseCatalog(data, args[0])
		if err != nil {
			return err
		}
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
		if err != nil {
			return err
		}
		defer st.Close()
		if err := checkCatalog(ctx, st, cat); err != nil {
			return fmt.Errorf("%s does not fit the database, nothing was stored:\n%w", args[0], err)
		}
		old, err := st.LatestCatalog(ctx)
		switch {
		case errors.Is(err, store.ErrNoCatalog):
			fmt.Printf("no catalog is stored yet: %s becomes version 1\n", args[0])
		case err != nil:
			return err
		default:
			if string(old.Document) == string(data) {
				fmt.Printf("the stored catalog (version %d) is the same: nothing to do\n", old.Version)
				return nil
			}
			if err := printCatalogDiff(old, data, cat); err != nil {
				return err
			}
		}
		forgotten, err := checkReordering(ctx, st, old.Document, cat, forget)
		if err != nil {
			return err
		}
		if dryRun {
			if len(forgotten) > 0 {
				fmt.Printf("would forget the applied versions of %s\n", strings.Join(forgotten, ", "))
			}
			fmt.Println("dry run: nothing stored")
			return nil
		}
		for _, e := range forgotten {
			n, err := st.ForgetVersions(ctx, e)
			if err != nil {
				return fmt.Errorf("forgetting the versions of %s (after %d rows; nothing was stored; run it again): %w", e, n, err)
			}
			fmt.Printf("forgot the applied versions of %d %s rows: run a backfill of %s to bring its target in line\n", n, e, e)
		}
		v, stored, err := st.StoreCatalog(ctx, data, appliedBy(), note)
		if err != nil {
			return err
		}
		if !stored {
			fmt.Printf("the stored catalog (version %d) is the same: nothing to do\n", v)
			return nil
		}
		fmt.Printf("stored catalog version %d: running replicas follow it within seconds. Run `syncflow streams apply` for new entities or changed consumer settings (with --prune for removed entities)\n", v)
		return nil
	}
}

// checkReordering refuses a change that would make an entity's applied versions
// mean something else, for entities with rows in the ledger: its key fields (other
// keys), its rowversion form or time zone (other order values: every update of
// an applied key could be judged stale), or its target table or key (rows already
// applied would not be written there). Such a change needs --forget-versions for
// the entity, which clears its ledger rows. It returns the entities to forget.
func checkReordering(ctx context.Context, st *store.Store, oldDoc []byte, cat *catalog.Catalog, forget string) ([]string, error) {
	var wanted []string
	for _, e := range strings.Split(forget, ",") {
		if e = strings.TrimSpace(e); e != "" {
			if err := knownEntity(cat, e); err != nil {
				return nil, err
			}
			wanted = append(wanted, e)
		}
	}
	if len(oldDoc) == 0 {
		return wanted, nil
	}
	before, err := catalog.Parse(oldDoc)
	if err != nil {
		return wanted, nil // an older release's catalog: nothing to compare
	}
	changed := map[string]string{}
	for _, e := range cat.Entities() {
		old, ok := before.Entity(e.Name)
		if !ok {
			continue
		}
		switch {
		case fmt.Sprint(old.Key) != fmt.Sprint(e.Key):
			changed[e.Name] = "its key fields"
		case old.RowVersion != e.RowVersion:
			changed[e.Name] = "its rowversion form"
		case old.TimeZone.String() != e.TimeZone.String():
			changed[e.Name] = "the time zone of its rowversions"
		case old.Target.QualifiedName() != e.Target.QualifiedName() || fmt.Sprint(old.Target.Key) != fmt.Sprint(e.Target.Key):
			changed[e.Name] = "its target table or key"
		}
	}
	if len(changed) == 0 {
		return wanted, nil
	}
	names := slices.Sorted(maps.Keys(changed))
	applied, err := st.EntitiesApplied(ctx, names)
	if err != nil {
		return nil, err
	}
	var problems []string
	for _, e := range applied {
		if !slices.Contains(wanted, e) {
			problems = append(problems, fmt.Sprintf("entity %q changes %s, and the ledger holds versions of it applied under the old one", e, changed[e]))
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: %s: nothing was stored. Its applied versions would be compared with versions of another kind (every update could be judged stale, or rows would not reach the new table). Apply it with --forget-versions %s to forget them, then run a backfill", errUsage,
			strings.Join(problems, "; "), strings.Join(applied, ","))
	}
	return wanted, nil
}

// checkCatalog checks cat against the database as `syncflow run` would at
// start: the schema is current, every target table exists with a unique index
// on its key, and the mapping rules fit the target columns.
func checkCatalog(ctx context.Context, st *store.Store, cat *catalog.Catalog) error {
	if err := service.CheckSchema(ctx, st); err != nil {
		return err
	}
	if err := st.PrepareTargets(ctx, cat); err != nil {
		return err
	}
	rules, err := st.LoadMappings(ctx)
	if err != nil {
		return err
	}
	if _, err := mapping.Compile(rules); err != nil {
		return fmt.Errorf("bridge.field_mappings holds invalid rules: %w", err)
	}
	return st.CheckRules(ctx, cat, rules)
}

// printCatalogDiff prints which entities the new catalog adds, removes and
// changes, then the lines that differ.
func printCatalogDiff(old store.CatalogVersion, data []byte, cat *catalog.Catalog) error {
	before, err := catalog.Parse(old.Document)
	if err != nil {
		// An older release may have stored what this one no longer reads.
		fmt.Printf("the stored version %d does not parse with this release (%v); its lines follow\n", old.Version, err)
	}
	if before != nil {
		added, removed, changed := entityChanges(before, cat)
		fmt.Printf("against the stored version %d: %s added, %s removed, %s changed\n", old.Version, list(added), list(removed), list(changed))
	}
	fmt.Printf("--- stored version %d\n+++ new\n", old.Version)
	for _, l := range lineDiff(strings.Split(string(old.Document), "\n"), strings.Split(string(data), "\n")) {
		fmt.Println(l)
	}
	return nil
}

func list(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// entityChanges compares two catalogs entity by entity.
func entityChanges(before, after *catalog.Catalog) (added, removed, changed []string) {
	for _, e := range after.Entities() {
		old, ok := before.Entity(e.Name)
		switch {
		case !ok:
			added = append(added, e.Name)
		case fmt.Sprintf("%+v", describeEntity(old)) != fmt.Sprintf("%+v", describeEntity(e)):
			changed = append(changed, e.Name)
		}
	}
	for _, e := range before.Entities() {
		if _, ok := after.Entity(e.Name); !ok {
			removed = append(removed, e.Name)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	slices.Sort(changed)
	return added, removed, changed
}

// describeEntity is what makes two versions of an entity the same.
func describeEntity(e *catalog.Entity) []any {
	return []any{e.Key, e.RowVersion, e.Parents, e.Target, e.Delete, e.SoftDeleteColumn, e.Upsert, e.TimeZone.String(), e.Consumers}
}

// lineDiff returns a unified-style diff of two texts (" " same, "-" only in a,
// "+" only in b), with three lines of context around each change.
func lineDiff(a, b []string) []string {
	// The longest common subsequence, by dynamic programming: catalogs are a
	// few hundred lines.
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var all []string
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			all = append(all, " "+a[i])
			i, j = i+1, j+1
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			all = append(all, "+"+b[j])
			j++
		default:
			all = append(all, "-"+a[i])
			i++
		}
	}
	const context = 3
	keep := make([]bool, len(all))
	for k, l := range all {
		if l[0] != ' ' {
			for d := max(0, k-context); d <= min(len(all)-1, k+context); d++ {
				keep[d] = true
			}
		}
	}
	var out []string
	for k, l := range all {
		switch {
		case keep[k]:
			out = append(out, l)
		case k > 0 && keep[k-1]:
			out = append(out, "@@")
		}
	}
	return out
}

func appliedBy() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

func setupCatalogShow(f *flags) runFunc {
	var (
		c       common
		version int
	)
	c.register(f)
	f.int(&version, "version", 0, "print this version (0, the default: the newest)")
	return func(ctx context.Context, _ []string) error {
		if version < 0 {
			return fmt.Errorf("%w: --version %d: versions count from 1 (`syncflow catalog history` lists them)", errUsage, version)
		}
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 1})
		if err != nil {
			return err
		}
		defer st.Close()
		var v store.CatalogVersion
		if version == 0 {
			v, err = st.LatestCatalog(ctx)
		} else {
			v, err = st.Catalog(ctx, version)
		}
		switch {
		case errors.Is(err, store.ErrNoCatalog):
			return fmt.Errorf("%w: no catalog is stored: `syncflow catalog apply FILE` stores one", errNotFound)
		case errors.Is(err, store.ErrNotFound):
			return fmt.Errorf("%w: there is no catalog version %d: `syncflow catalog history` lists them", errNotFound, version)
		case err != nil:
			return err
		}
		_, err = os.Stdout.Write(v.Document)
		return err
	}
}

func setupCatalogHistory(f *flags) runFunc {
	var (
		c      common
		asJSON bool
	)
	c.register(f)
	f.BoolVar(&asJSON, "json", false, "JSON for scripts")
	return func(ctx context.Context, _ []string) error {
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 1})
		if err != nil {
			return err
		}
		defer st.Close()
		versions, err := st.CatalogHistory(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(versions)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tSTORED\tBY\tSHA256\tNOTE")
		for _, v := range versions {
			note := ""
			if v.Note != nil {
				note = *v.Note
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", v.Version, v.CreatedAt.UTC().Format(time.RFC3339), v.AppliedBy, v.SHA256[:12], note)
		}
		return tw.Flush()
	}
}

func setupCatalogCheck(f *flags) runFunc {
	var (
		c      common
		asJSON bool
	)
	c.register(f)
	f.BoolVar(&asJSON, "json", false, "JSON for scripts")
	return func(ctx context.Context, args []string) error {
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
		if err != nil {
			return err
		}
		defer st.Close()
		var cat *catalog.Catalog
		if len(args) == 1 {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if cat, err = parseCatalog(data, args[0]); err != nil {
				return err
			}
		} else if cat, err = storedCatalog(ctx, st); err != nil {
			return err
		}
		report, err := st.CompareTargets(ctx, cat)
		if err != nil {
			return err
		}
		if asJSON {
			if err := printJSON(report); err != nil {
				return err
			}
		} else {
			printComparison(report)
		}
		if problem := checkCatalog(ctx, st, cat); problem != nil {
			return fmt.Errorf("the catalog does not fit the database:\n%w", problem)
		}
		if !asJSON {
			fmt.Println("the catalog fits the database")
		}
		return nil
	}
}

// printComparison prints, per entity, the target's columns and what fills them.
func printComparison(report []store.TargetComparison) {
	for _, t := range report {
		fmt.Printf("%s -> %s\n", t.Entity, t.Table)
		if t.Problem != "" {
			fmt.Printf("  %s\n", t.Problem)
			continue
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  COLUMN\tTYPE\tFILLED BY")
		for _, col := range t.Columns {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", col.Name, col.Type, cmp.Or(col.FilledBy, "-"))
		}
		tw.Flush()
		for _, r := range t.RulesWithoutColumn {
			fmt.Printf("  rule %s has no column to write\n", r)
		}
		if len(t.ObservedUnmapped) > 0 {
			fmt.Printf("  fields seen in events that nothing takes: %s (see `syncflow drift`)\n", strings.Join(t.ObservedUnmapped, ", "))
		}
	}
}

// storeBuiltInCatalog stores the built-in catalog when the database has none,
// so that a new database works at once (`make run`, `migrate up`).
func storeBuiltInCatalog(ctx context.Context, st *store.Store) error {
	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		return err
	}
	v, stored, err := st.StoreCatalogIfNone(ctx, data, appliedBy(), "the built-in catalog, stored on a new database")
	if err == nil && stored {
		fmt.Fprintf(os.Stderr, "stored the built-in catalog as version %d (replace it with `syncflow catalog apply FILE`)\n", v)
	}
	return err
}
