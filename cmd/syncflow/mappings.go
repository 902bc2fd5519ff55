package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/store"
)

func mappingsCommands() []command {
	return []command{
		{path: "mappings list", summary: "the field-mapping rules, as a table (--json for scripts)", setup: func(f *flags) runFunc {
			var (
				c      common
				defs   definitions
				entity string
				asJSON bool
			)
			c.register(f)
			defs.register(f)
			f.StringVar(&entity, "entity", "", "only this entity's rules")
			f.BoolVar(&asJSON, "json", false, "JSON for scripts")
			return func(ctx context.Context, _ []string) error {
				rules, err := loadRules(ctx, c, defs, entity)
				if err != nil {
					return err
				}
				if asJSON {
					return mapping.WriteRules(os.Stdout, mapping.FormatJSON, rules)
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ENTITY\tSOURCE FIELD\tTARGET FIELD\tTRANSFORMATION\tDEFAULT\tREQUIRED")
				for _, r := range rules {
					def := "-"
					if r.DefaultValue != nil {
						def = fmt.Sprintf("%q", *r.DefaultValue)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", r.Entity, r.SourceField, r.TargetField, r.Transformation, def, r.IsRequired)
				}
				if len(rules) == 0 {
					fmt.Fprintln(tw, "(no rules: fields pass through under their lower-cased names)")
				}
				return tw.Flush()
			}
		}},
		{path: "mappings export", summary: "write the rules to stdout, as CSV (the default) or JSON", setup: func(f *flags) runFunc {
			var (
				c              common
				defs           definitions
				entity, format string
			)
			c.register(f)
			defs.register(f)
			f.StringVar(&entity, "entity", "", "only this entity's rules")
			f.StringVar(&format, "format", mapping.FormatCSV, "csv or json")
			return func(ctx context.Context, _ []string) error {
				if format != mapping.FormatCSV && format != mapping.FormatJSON {
					return fmt.Errorf("%w: --format is csv or json, not %q", errUsage, format)
				}
				rules, err := loadRules(ctx, c, defs, entity)
				if err != nil {
					return err
				}
				return mapping.WriteRules(os.Stdout, format, rules)
			}
		}},
		{path: "mappings import", args: "FILE", minArgs: 1, maxArgs: 1,
			summary: "validate a CSV or JSON file of rules against the catalog and the target tables, and write all or nothing",
			setup: func(f *flags) runFunc {
				var (
					c               common
					defs            definitions
					format          string
					dryRun, replace bool
				)
				c.register(f)
				defs.register(f)
				f.StringVar(&format, "format", "", "csv or json (default: from the file's extension)")
				f.BoolVar(&dryRun, "dry-run", false, "validate and show what would change, write nothing")
				f.BoolVar(&replace, "replace", false, "also delete the rules of the file's entities that the file does not list")
				return func(ctx context.Context, args []string) error {
					st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
					if err != nil {
						return err
					}
					defer st.Close()
					return importMappings(ctx, st, defs, args[0], format, dryRun, replace)
				}
			}},
	}
}

// loadRules reads the rules, only entity's when it is set (a catalog entity).
func loadRules(ctx context.Context, c common, defs definitions, entity string) ([]mapping.Rule, error) {
	if entity != "" {
		cat, err := defs.catalog(ctx, c.databaseURL)
		if err != nil {
			return nil, err
		}
		if err := knownEntity(cat, entity); err != nil {
			return nil, err
		}
	}
	st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	rules, err := st.LoadMappings(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading bridge.field_mappings: %w (has `syncflow migrate up` run?)", err)
	}
	if entity != "" {
		rules = slices.DeleteFunc(rules, func(r mapping.Rule) bool { return r.Entity != entity })
	}
	return rules, nil
}

func importMappings(ctx context.Context, st *store.Store, defs definitions, file, format string, dryRun, replace bool) error {
	if format == "" {
		format = strings.TrimPrefix(strings.ToLower(filepath.Ext(file)), ".")
	}
	if format != mapping.FormatCSV && format != mapping.FormatJSON {
		return fmt.Errorf("%w: cannot tell the format of %s: name it .csv or .json, or pass --format csv|json", errUsage, file)
	}
	in, err := os.Open(file)
	if err != nil {
		return err
	}
	defer in.Close()
	incoming, err := mapping.ReadRules(in, format)
	if err != nil {
		return fmt.Errorf("%s: %w\nnothing was imported", file, err)
	}
	cat, err := defs.catalogIn(ctx, st)
	if err != nil {
		return err
	}
	var problems []string
	for i := range incoming {
		r := &incoming[i]
		r.SourceField = strings.ToUpper(strings.TrimSpace(r.SourceField))
		if r.Transformation == "" {
			r.Transformation = "none"
		}
		if _, ok := cat.Entity(r.Entity); !ok {
			problems = append(problems, fmt.Sprintf("rule %d: %s", i+1, cat.Unknown(r.Entity)))
		}
	}
	// The rules as they will be after the import must form a valid set.
	existing, err := st.LoadMappings(ctx)
	if err != nil {
		return err
	}
	after, changes, lines := mergeRules(existing, incoming, replace)
	if _, err := mapping.Compile(incoming); err != nil {
		problems = append(problems, err.Error())
	} else if _, err := mapping.Compile(after); err != nil {
		problems = append(problems, "together with the rules already in bridge.field_mappings: "+err.Error())
	}
	if err := st.CheckRules(ctx, cat, incoming); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s is invalid, nothing was imported:\n%s", file, strings.Join(problems, "\n"))
	}
	verb := "imported"
	if dryRun {
		verb = "would import"
	}
	fmt.Printf("%s %d rules from %s: %d new, %d changed, %d unchanged, %d removed\n", verb, len(incoming), file,
		changes["new"], changes["changed"], changes["unchanged"], changes["removed"])
	for _, l := range lines {
		fmt.Println("  " + l)
	}
	if dryRun {
		fmt.Println("(dry run: nothing was changed)")
		return nil
	}
	return st.WriteMappings(ctx, incoming, replace)
}

type ruleKey struct{ entity, source, target string }

func keyOf(r mapping.Rule) ruleKey {
	return ruleKey{r.Entity, strings.ToUpper(r.SourceField), r.TargetField}
}

// mergeRules returns the rule set after importing incoming over existing, counts
// of what changes, and a line for each rule that is new, changed or removed.
func mergeRules(existing, incoming []mapping.Rule, replace bool) ([]mapping.Rule, map[string]int, []string) {
	changes := map[string]int{}
	var lines []string
	byKey := map[ruleKey]mapping.Rule{}
	for _, r := range existing {
		byKey[keyOf(r)] = r
	}
	inFile := map[ruleKey]bool{}
	entities := map[string]bool{}
	for _, r := range incoming {
		k := keyOf(r)
		inFile[k], entities[r.Entity] = true, true
		old, ok := byKey[k]
		switch {
		case !ok:
			changes["new"]++
			lines = append(lines, "new:     "+describeRule(r))
		case sameRule(old, r):
			changes["unchanged"]++
		default:
			changes["changed"]++
			lines = append(lines, "changed: "+describeRule(r)+", was "+describeRule(old))
		}
		byKey[k] = r
	}
	var out []mapping.Rule
	for k, r := range byKey {
		if replace && entities[k.entity] && !inFile[k] {
			changes["removed"]++
			lines = append(lines, "removed: "+describeRule(r))
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b mapping.Rule) int {
		return strings.Compare(a.Entity+"\x00"+a.SourceField+"\x00"+a.TargetField, b.Entity+"\x00"+b.SourceField+"\x00"+b.TargetField)
	})
	slices.Sort(lines)
	return out, changes, lines
}

func describeRule(r mapping.Rule) string {
	s := fmt.Sprintf("%s %s -> %s (%s", r.Entity, r.SourceField, r.TargetField, cmp.Or(r.Transformation, "none"))
	if r.DefaultValue != nil {
		s += fmt.Sprintf(", default %q", *r.DefaultValue)
	}
	if r.IsRequired {
		s += ", required"
	}
	return s + ")"
}

func sameRule(a, b mapping.Rule) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
