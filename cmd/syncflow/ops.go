package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/store"
)

// workbench is what the commands that re-run records through the pipeline need:
// the store, the catalog, the target tables checked, and the current mapping rules.
type workbench struct {
	st      *store.Store
	cat     *catalog.Catalog
	rules   *mapping.Set
	applier *apply.Applier
	dls     *deadletter.DeadLetters
}

func openWorkbench(ctx context.Context, c common, defs definitions) (*workbench, error) {
	cat, err := defs.catalog(ctx, c.databaseURL)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 4})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*workbench, error) {
		st.Close()
		return nil, err
	}
	if err := service.CheckSchema(ctx, st); err != nil {
		return fail(err)
	}
	if err := st.PrepareTargets(ctx, cat); err != nil {
		return fail(err)
	}
	rs, err := st.LoadMappings(ctx)
	if err != nil {
		return fail(err)
	}
	rules, err := mapping.Compile(rs)
	if err != nil {
		return fail(fmt.Errorf("bridge.field_mappings holds invalid rules, fix them first: %w", err))
	}
	if err := st.CheckRules(ctx, cat, rs); err != nil {
		return fail(fmt.Errorf("bridge.field_mappings does not fit the target tables, fix them first (syncflow mappings export, edit, import):\n%w", err))
	}
	dlCfg := deadletter.Config{}
	applier, err := apply.NewApplier(st, dlCfg.Stamp(apply.Config{}))
	if err != nil {
		return fail(err)
	}
	dls, err := deadletter.New(store.DeadLetters{Store: st}, applier, dlCfg)
	if err != nil {
		return fail(err)
	}
	return &workbench{st: st, cat: cat, rules: rules, applier: applier, dls: dls}, nil
}

func (w *workbench) Close() { w.st.Close() }

// knownEntity refuses a name that is not a catalog entity: exit code 3.
func knownEntity(cat *catalog.Catalog, name string) error {
	if _, ok := cat.Entity(name); !ok {
		return fmt.Errorf("%w: %s", errNotFound, cat.Unknown(name))
	}
	return nil
}

// stages are the stages a dead letter can have failed at.
var stages = []pipeline.Stage{pipeline.StageDecode, pipeline.StageNormalization, pipeline.StageMapping, pipeline.StageParent,
	pipeline.StageOrphan, pipeline.StageWrite, pipeline.StageMaxDeliver}

// knownStage refuses a name that is not a stage: exit code 3.
func knownStage(name string) error {
	if !slices.Contains(stages, pipeline.Stage(name)) {
		names := make([]string, len(stages))
		for i, s := range stages {
			names[i] = string(s)
		}
		hint := ""
		if near := catalog.Closest(name, names); near != "" {
			hint = fmt.Sprintf(" (did you mean %s?)", near)
		}
		return fmt.Errorf("%w: %q is not a stage%s; the stages: %s", errNotFound, name, hint, strings.Join(names, ", "))
	}
	return nil
}

// parseUIDs parses UID arguments; a malformed one is a usage error.
func parseUIDs(args []string) ([]uuid.UUID, error) {
	out := make([]uuid.UUID, 0, len(args))
	for _, a := range args {
		u, err := uuid.Parse(a)
		if err != nil {
			return nil, fmt.Errorf("%w: %q is not a UID (copy one from the list command)", errUsage, a)
		}
		out = append(out, u)
	}
	return out, nil
}

// parseSince reads an RFC 3339 time, a date, or a duration back from now (24h).
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		if dur, err := time.ParseDuration(d + "h"); err == nil && dur >= 0 {
			return now.Add(-24 * dur), nil
		}
	}
	if strings.HasPrefix(s, "-") {
		return time.Time{}, fmt.Errorf("%w: %q: a duration back from now cannot be negative (it would be in the future): write 5d for five days ago", errUsage, s)
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", time.DateOnly} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%w: %q is not a time: use RFC 3339 (2026-11-26T10:00:00Z), a date (2026-11-26) or a duration back from now (90m, 24h, 7d)", errUsage, s)
}

// parseAge reads a duration with an optional d suffix for days (90d).
func parseAge(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := time.ParseDuration(d + "h"); err == nil && n > 0 {
			return 24 * n, nil
		}
		return 0, fmt.Errorf("%w: %q is not an age: use e.g. 12h, 30d", errUsage, s)
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%w: %q is not an age: use e.g. 12h, 30d", errUsage, s)
	}
	return d, nil
}

// parseRetention reads the age of a command that deletes (prune, dlq purge):
// parseAge, except that a bare m is refused, since there it is minutes and
// someone deleting by age likely means months.
func parseRetention(flag, s string) (time.Duration, error) {
	if strings.HasSuffix(s, "m") && !strings.HasSuffix(s, "ms") {
		return 0, fmt.Errorf("%w: %s %s: m means minutes here, which is rarely what a retention means: write days (90d for about three months) or hours (2h)", errUsage, flag, s)
	}
	return parseAge(s)
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func ago(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Round(time.Minute).Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Round(time.Hour).Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
