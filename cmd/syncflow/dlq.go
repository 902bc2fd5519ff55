package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
)

// dlqFilter holds the flags that choose dead letters.
type dlqFilter struct {
	entity, stage, since, until, reason, fingerprint, match string
	outside                                                 bool
}

func (d *dlqFilter) register(f *flags) {
	f.StringVar(&d.entity, "entity", "", "only this entity's dead letters (a catalog entity, or the entity of a subject no catalog entity owns)")
	f.StringVar(&d.stage, "stage", "", "only this stage: decode, normalization, mapping, parent, orphan, write or max_deliver")
	f.StringVar(&d.since, "since", "", "only dead letters written since this time (RFC 3339, a date, or a duration back: 24h, 7d)")
	f.StringVar(&d.until, "until", "", "only dead letters written before this time (the forms of --since)")
	f.StringVar(&d.reason, "reason", "", "only dead letters whose error contains this text (case-insensitive)")
	f.StringVar(&d.fingerprint, "fingerprint", "", "only the dead letters of this group (a fingerprint from syncflow dlq groups)")
	f.BoolVar(&d.outside, "outside-catalog", false, "only dead letters of subjects no catalog entity owns")
	f.StringVar(&d.match, "match", "", `only dead letters whose event contains this JSON, e.g. '{"data":{"PART_NO":"X"}}' (fast with syncflow db gin enable)`)
}

func (d *dlqFilter) set() bool {
	return d.entity != "" || d.stage != "" || d.since != "" || d.until != "" || d.reason != "" || d.fingerprint != "" || d.match != "" || d.outside
}

// describe says what the filter chooses, for messages.
func (d *dlqFilter) describe() string {
	var parts []string
	add := func(name, v string) {
		if v != "" {
			parts = append(parts, name+" "+v)
		}
	}
	add("entity", d.entity)
	add("stage", d.stage)
	add("since", d.since)
	add("until", d.until)
	add("reason containing", quoteIf(d.reason))
	add("fingerprint", d.fingerprint)
	add("event containing", d.match)
	if d.outside {
		parts = append(parts, "outside the catalog")
	}
	return strings.Join(parts, ", ")
}

func quoteIf(s string) string {
	if s == "" {
		return ""
	}
	return fmt.Sprintf("%q", s)
}

var fingerprintRE = regexp.MustCompile(`^[0-9a-fA-F]{12}$`)

// build checks the filter and turns it into the store's. Names that match
// nothing known exit 3: a catalog entity, or one that has dead letters (of a
// subject outside the catalog), a known stage, a fingerprint some dead letter has.
func (d *dlqFilter) build(ctx context.Context, st *store.Store, cat *catalog.Catalog) (store.DeadLetterFilter, error) {
	now := time.Now()
	var sf store.DeadLetterFilter
	var err error
	if sf.Since, err = parseSince(d.since, now); err != nil {
		return sf, err
	}
	if sf.Until, err = parseSince(d.until, now); err != nil {
		return sf, err
	}
	if !sf.Since.IsZero() && !sf.Until.IsZero() && !sf.Since.Before(sf.Until) {
		return sf, fmt.Errorf("%w: --since %s is not before --until %s", errUsage, d.since, d.until)
	}
	if d.fingerprint != "" && !fingerprintRE.MatchString(d.fingerprint) {
		return sf, fmt.Errorf("%w: %q is not a fingerprint: copy one (12 hex digits) from `syncflow dlq groups`", errUsage, d.fingerprint)
	}
	if d.stage != "" {
		if err := knownStage(d.stage); err != nil {
			return sf, err
		}
	}
	if d.match != "" {
		if sf.Match, err = matchJSON(d.match); err != nil {
			return sf, err
		}
		if _, valid, err := st.GINState(ctx); err != nil {
			return sf, err
		} else if !valid {
			fmt.Fprintln(os.Stderr, "no GIN index on the dead letters' events: --match reads every dead letter (`syncflow db gin enable`, run as the schema owner, makes it fast)")
		}
	}
	if d.entity != "" {
		_, inCatalog := cat.Entity(d.entity)
		if inCatalog && d.outside {
			return sf, fmt.Errorf("%w: entity %s is in the catalog, and --outside-catalog chooses entities that are not: drop one", errUsage, d.entity)
		}
		if !inCatalog {
			have, err := st.DeadLetterEntities(ctx, []string{d.entity})
			if err != nil {
				return sf, err
			}
			if len(have) == 0 {
				return sf, fmt.Errorf("%w: %s; no dead letter has it either", errNotFound, cat.Unknown(d.entity))
			}
		}
	}
	sf.Entity, sf.Stage, sf.Reason, sf.Fingerprint = d.entity, d.stage, d.reason, strings.ToLower(d.fingerprint)
	if d.outside {
		sf.OutsideCatalog = cat.Names()
	}
	if sf.Fingerprint != "" {
		n, err := st.DeadLetterUIDs(ctx, store.DeadLetterFilter{Fingerprint: sf.Fingerprint})
		if err != nil {
			return sf, err
		}
		if len(n) == 0 {
			return sf, fmt.Errorf("%w: no dead letter has the fingerprint %s (see `syncflow dlq groups`)", errNotFound, d.fingerprint)
		}
	}
	return sf, nil
}

// matchJSON checks --match: a JSON object with at least one field, which an
// event contains when every field it names is in the event with that value.
func matchJSON(s string) ([]byte, error) {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf("%w: --match %s is not JSON (%v): quote it for the shell, e.g. --match '{\"data\":{\"PART_NO\":\"X\"}}'", errUsage, s, err)
	}
	if obj, ok := v.(map[string]any); ok && len(obj) > 0 {
		return []byte(s), nil
	}
	// An empty object would match every event: that is --all, said so.
	return nil, fmt.Errorf("%w: --match %s: give a JSON object with the fields to find, e.g. --match '{\"data\":{\"PART_NO\":\"X\"}}' (for every dead letter, use --all)", errUsage, s)
}

func dlqCommands() []command {
	return []command{
		{path: "dlq list", summary: "dead letters, newest first: entity, stage, age, retries, reason", setup: setupDLQList},
		{path: "dlq groups", summary: "unresolved dead letters grouped by entity, stage and the fingerprint of their reason", setup: setupDLQGroups},
		{path: "dlq show", args: "UID", minArgs: 1, maxArgs: 1, summary: "one dead letter: raw body, normalized data, error, history", setup: setupDLQShow},
		{path: "dlq retry", args: "[UID...]", maxArgs: -1, summary: "run dead letters through the current pipeline again; resolved when they pass", setup: func(f *flags) runFunc {
			return setupDLQAction(f, "retry")
		}},
		{path: "dlq resolve", args: "[UID...]", maxArgs: -1, summary: "mark dead letters resolved by hand, with --note saying why", setup: func(f *flags) runFunc {
			return setupDLQAction(f, "resolve")
		}},
		{path: "dlq purge", maxArgs: -1, args: "[UID...]", summary: "delete resolved dead letters (--resolved, as a confirmation)", setup: func(f *flags) runFunc {
			return setupDLQAction(f, "purge")
		}},
	}
}

// openStore opens the database and reads the catalog, for the commands that
// only read and change the bridge tables.
func openStore(ctx context.Context, c common, defs definitions) (*store.Store, *catalog.Catalog, error) {
	cat, err := defs.catalog(ctx, c.databaseURL)
	if err != nil {
		return nil, nil, err
	}
	st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
	if err != nil {
		return nil, nil, err
	}
	return st, cat, nil
}

// listing holds the flags of a paged listing.
type listing struct {
	limit  int
	after  string
	asJSON bool
}

func (l *listing) register(f *flags, what string) {
	f.IntVar(&l.limit, "limit", 100, "show at most this many "+what+" (1 to 10000)")
	f.StringVar(&l.after, "after", "", "the next page: the "+what+" after this UID (the last one shown)")
	f.BoolVar(&l.asJSON, "json", false, "JSON for scripts (an array; a note on stderr says when more are left)")
}

func (l *listing) check() (uuid.UUID, error) {
	if l.limit < 1 || l.limit > 10000 {
		return uuid.Nil, fmt.Errorf("%w: --limit is 1 to 10000, not %d", errUsage, l.limit)
	}
	if l.after == "" {
		return uuid.Nil, nil
	}
	u, err := uuid.Parse(l.after)
	if err != nil {
		return uuid.Nil, fmt.Errorf("%w: --after %q is not a UID (copy the last one of the previous page)", errUsage, l.after)
	}
	return u, nil
}

// footer says how much of the whole a page shows, and how to see the next page.
func (l *listing) footer(shown int, total int64, last uuid.UUID, what string) {
	if int64(shown) >= total && l.after == "" {
		return
	}
	msg := fmt.Sprintf("%d of %d %s shown", shown, total, what)
	if shown == l.limit {
		msg += fmt.Sprintf("; the next page: add --after %s", last)
	}
	if l.asJSON {
		fmt.Fprintln(os.Stderr, msg)
	} else {
		fmt.Println(msg)
	}
}

func setupDLQList(f *flags) runFunc {
	var (
		c                    common
		defs                 definitions
		flt                  dlqFilter
		page                 listing
		unresolved, resolved bool
	)
	c.register(f)
	defs.register(f)
	flt.register(f)
	page.register(f, "dead letters")
	f.BoolVar(&unresolved, "unresolved", false, "only unresolved dead letters")
	f.BoolVar(&resolved, "resolved", false, "only resolved dead letters")
	return func(ctx context.Context, _ []string) error {
		after, err := page.check()
		if err != nil {
			return err
		}
		if unresolved && resolved {
			return fmt.Errorf("%w: --unresolved and --resolved exclude each other: leave both out for every dead letter", errUsage)
		}
		st, cat, err := openStore(ctx, c, defs)
		if err != nil {
			return err
		}
		defer st.Close()
		sf, err := flt.build(ctx, st, cat)
		if err != nil {
			return err
		}
		sf.Unresolved, sf.Resolved, sf.Limit, sf.After = unresolved, resolved, page.limit, after
		if after != uuid.Nil {
			if _, err := st.DeadLetter(ctx, after); errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w: no dead letter %s (the --after cursor)", errNotFound, after)
			}
		}
		list, total, err := st.ListDeadLetters(ctx, sf)
		if err != nil {
			return err
		}
		if page.asJSON {
			if list == nil {
				list = []store.DeadLetterInfo{}
			}
			if err := printJSON(list); err != nil {
				return err
			}
		} else if err := dlqTable(list, cat); err != nil {
			return err
		}
		if len(list) > 0 {
			page.footer(len(list), total, list[len(list)-1].UID, "dead letters")
		}
		return nil
	}
}

func dlqTable(list []store.DeadLetterInfo, cat *catalog.Catalog) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UID\tENTITY\tSTAGE\tAGE\tRETRIES\tSTATE\tERROR")
	for _, d := range list {
		state := "unresolved"
		switch {
		case d.ResolvedAt != nil:
			state = "resolved"
		case d.NextRetryAt != nil:
			state = "retry in " + time.Until(*d.NextRetryAt).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.UID, d.Entity, d.Stage, ago(d.CreatedAt), retries(d, cat), state, clip(d.Error, 90))
	}
	if len(list) == 0 {
		fmt.Fprintln(tw, "(no dead letters match)")
	}
	return tw.Flush()
}

// clip shortens s to at most n runes, on one line.
func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-3]) + "..."
	}
	return s
}

func setupDLQGroups(f *flags) runFunc {
	var (
		c      common
		defs   definitions
		flt    dlqFilter
		limit  int
		asJSON bool
	)
	c.register(f)
	defs.register(f)
	flt.register(f)
	f.IntVar(&limit, "limit", 100, "show at most this many groups, the largest first")
	f.BoolVar(&asJSON, "json", false, "JSON for scripts")
	return func(ctx context.Context, _ []string) error {
		if limit < 1 {
			return fmt.Errorf("%w: --limit must be 1 or more", errUsage)
		}
		st, cat, err := openStore(ctx, c, defs)
		if err != nil {
			return err
		}
		defer st.Close()
		sf, err := flt.build(ctx, st, cat)
		if err != nil {
			return err
		}
		sf.Unresolved, sf.Limit = true, limit
		groups, total, err := st.DeadLetterGroups(ctx, sf)
		if err != nil {
			return err
		}
		if asJSON {
			if groups == nil {
				groups = []store.DeadLetterGroup{}
			}
			if err := printJSON(groups); err != nil {
				return err
			}
			if int64(len(groups)) < total {
				fmt.Fprintf(os.Stderr, "%d of %d groups shown\n", len(groups), total)
			}
			return nil
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FINGERPRINT\tENTITY\tSTAGE\tCOUNT\tFIRST\tLAST\tSAMPLE UID\tREASON")
		var letters int64
		for _, g := range groups {
			letters += g.Count
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", g.Fingerprint, g.Entity, g.Stage, g.Count, ago(g.FirstSeen), ago(g.LastSeen), g.SampleUID, clip(g.Reason, 100))
		}
		if len(groups) == 0 {
			fmt.Fprintln(tw, "(no unresolved dead letters match)")
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(groups) > 0 {
			if int64(len(groups)) < total {
				fmt.Printf("%d of %d groups shown (the largest first)\n", len(groups), total)
			}
			fmt.Printf("\nA group as a whole: syncflow dlq retry --fingerprint %s --dry-run, or\n"+
				"syncflow dlq resolve --fingerprint %s --note TEXT --dry-run (then without --dry-run)\n", groups[0].Fingerprint, groups[0].Fingerprint)
		}
		return nil
	}
}

func setupDLQShow(f *flags) runFunc {
	var (
		c      common
		defs   definitions
		asJSON bool
	)
	c.register(f)
	defs.register(f)
	f.BoolVar(&asJSON, "json", false, "JSON for scripts")
	return func(ctx context.Context, args []string) error {
		uids, err := parseUIDs(args)
		if err != nil {
			return err
		}
		st, cat, err := openStore(ctx, c, defs)
		if err != nil {
			return err
		}
		defer st.Close()
		d, err := st.DeadLetter(ctx, uids[0])
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: no dead letter %s (see `syncflow dlq list`)", errNotFound, uids[0])
		} else if err != nil {
			return err
		}
		if asJSON {
			return printJSON(d)
		}
		return dlqShow(d, cat)
	}
}

func dlqShow(d store.DeadLetterInfo, cat *catalog.Catalog) error {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "uid\t%s\n", d.UID)
	fmt.Fprintf(w, "entity\t%s\n", d.Entity)
	fmt.Fprintf(w, "stage\t%s\n", d.Stage)
	fmt.Fprintf(w, "error\t%s\n", d.Error)
	fmt.Fprintf(w, "fingerprint\t%s\n", d.Fingerprint)
	fmt.Fprintf(w, "message\t%s seq %d (%s)\n", d.Stream, d.StreamSeq, d.Subject)
	fmt.Fprintf(w, "created\t%s (%s ago)\n", d.CreatedAt.UTC().Format(time.RFC3339), ago(d.CreatedAt))
	fmt.Fprintf(w, "retries\t%s\n", retries(d, cat))
	if d.NextRetryAt != nil {
		fmt.Fprintf(w, "next retry\t%s\n", d.NextRetryAt.UTC().Format(time.RFC3339))
	}
	if d.ResolvedAt != nil {
		note := ""
		if d.ResolutionNote != nil {
			note = *d.ResolutionNote
		}
		fmt.Fprintf(w, "resolved\t%s: %s\n", d.ResolvedAt.UTC().Format(time.RFC3339), note)
	}
	w.Flush()
	fmt.Printf("\nraw body (%d bytes):\n%s\n", len(d.Raw), d.RawText)
	if len(d.Normalized) > 0 {
		fmt.Printf("\nnormalized data:\n%s\n", d.Normalized)
	}
	if len(d.History) > 2 {
		fmt.Printf("\nhistory:\n%s\n", d.History)
	}
	return nil
}

// setupDLQAction is retry, resolve and purge: they choose dead letters by UID,
// by filter or with --all (never by default), say how many they chose, and
// change nothing with --dry-run.
func setupDLQAction(f *flags, verb string) runFunc {
	var (
		c           common
		defs        definitions
		flt         dlqFilter
		all, dryRun bool
		note, age   string
		resolved    bool
	)
	c.register(f)
	defs.register(f)
	flt.register(f)
	f.BoolVar(&dryRun, "dry-run", false, "say which dead letters would be "+pastTense(verb)+"; change nothing")
	switch verb {
	case "retry":
		f.BoolVar(&all, "all", false, "every unresolved dead letter")
	case "resolve":
		f.BoolVar(&all, "all", false, "every unresolved dead letter")
		f.StringVar(&note, "note", "", "why they are resolved (required)")
	case "purge":
		f.BoolVar(&all, "all", false, "every resolved dead letter")
		f.BoolVar(&resolved, "resolved", false, "required, as a confirmation: purge deletes resolved dead letters only")
		f.StringVar(&age, "older-than", "", "only those resolved longer ago than this (e.g. 30d)")
	}
	return func(ctx context.Context, args []string) error {
		uids, err := parseUIDs(args)
		if err != nil {
			return err
		}
		switch {
		case verb == "resolve" && strings.TrimSpace(note) == "":
			return fmt.Errorf("%w: say why with --note TEXT (it is kept with each dead letter)", errUsage)
		case verb == "purge" && !resolved:
			return fmt.Errorf("%w: purge deletes resolved dead letters only: say --resolved, and which (--older-than AGE, a filter, UIDs or --all)", errUsage)
		}
		narrowed := len(uids) > 0 || flt.set() || age != ""
		if !narrowed && !all {
			return fmt.Errorf("%w: say which dead letters to %s: UIDs, a filter (--entity, --stage, --since, --until, --reason, --fingerprint, --match, --outside-catalog%s) or --all",
				errUsage, verb, map[bool]string{true: ", --older-than"}[verb == "purge"])
		}
		if narrowed && all {
			return fmt.Errorf("%w: --all chooses every dead letter and cannot go with UIDs or filters: drop --all to narrow the choice, or the filters to take all", errUsage)
		}
		var resolvedBefore time.Time
		if age != "" {
			d, err := parseRetention("--older-than", age)
			if err != nil {
				return err
			}
			resolvedBefore = time.Now().Add(-d)
		}
		st, cat, err := openStore(ctx, c, defs)
		if err != nil {
			return err
		}
		defer st.Close()
		sf, err := flt.build(ctx, st, cat)
		if err != nil {
			return err
		}
		sf.UIDs = uids
		switch verb {
		case "retry", "resolve":
			sf.Unresolved = true
		case "purge":
			sf.Resolved, sf.ResolvedBefore = true, resolvedBefore
		}
		if err := checkNamedDeadLetters(ctx, st, uids, verb); err != nil {
			return err
		}
		counts, err := st.CountDeadLetters(ctx, sf)
		if err != nil {
			return err
		}
		var n int64
		var parts []string
		for _, k := range counts {
			n += k.Count
			parts = append(parts, fmt.Sprintf("%s/%s %d", k.Entity, k.Stage, k.Count))
		}
		what := flt.describe()
		if verb == "purge" && age != "" {
			what = strings.TrimPrefix(what+", resolved more than "+age+" ago", ", ")
		}
		if what == "" && len(uids) == 0 {
			what = "all"
		} else if len(uids) > 0 {
			what = strings.TrimPrefix(what+fmt.Sprintf(", %d UIDs", len(uids)), ", ")
		}
		if n == 0 {
			if dryRun {
				fmt.Printf("would %s 0 dead letters: none matches (%s)\n(dry run: nothing was changed)\n", verb, what)
				return nil
			}
			fmt.Printf("%s 0 dead letters: none matches (%s)\n", pastTense(verb), what)
			return nil
		}
		if dryRun {
			fmt.Printf("would %s %d dead letters (%s): %s\n", verb, n, what, strings.Join(parts, ", "))
			preview := sf
			preview.Limit = 10
			list, _, err := st.ListDeadLetters(ctx, preview)
			if err != nil {
				return err
			}
			if err := dlqTable(list, cat); err != nil {
				return err
			}
			if n > int64(len(list)) {
				fmt.Printf("... and %d more (see `syncflow dlq list` with the same filter)\n", n-int64(len(list)))
			}
			fmt.Println("(dry run: nothing was changed)")
			return nil
		}
		fmt.Printf("%s %d dead letters (%s): %s\n", map[string]string{"retry": "retrying", "resolve": "resolving", "purge": "purging"}[verb], n, what, strings.Join(parts, ", "))
		switch verb {
		case "retry":
			return retryDeadLetters(ctx, c, defs, st, sf)
		case "resolve":
			done, err := st.ResolveDeadLetters(ctx, sf, note)
			if err != nil {
				return fmt.Errorf("after %d resolved: %w", done, err)
			}
			fmt.Printf("resolved %d dead letters\n", done)
		case "purge":
			done, err := st.PurgeDeadLetters(ctx, sf)
			if err != nil {
				return fmt.Errorf("after %d purged: %w", done, err)
			}
			fmt.Printf("purged %d resolved dead letters\n", done)
		}
		return nil
	}
}

func pastTense(verb string) string {
	switch verb {
	case "retry":
		return "retried"
	case "resolve":
		return "resolved"
	case "purge":
		return "purged"
	}
	return verb + "d"
}

// checkNamedDeadLetters makes sure every UID names a dead letter the action can
// take: one that does not exist exits 3; a retry or resolve of a resolved one,
// or a purge of an unresolved one, is refused.
func checkNamedDeadLetters(ctx context.Context, st *store.Store, uids []uuid.UUID, verb string) error {
	if len(uids) == 0 {
		return nil
	}
	found, err := st.DeadLetterUIDs(ctx, store.DeadLetterFilter{UIDs: uids})
	if err != nil {
		return err
	}
	if missing := missingUIDs(uids, found); len(missing) > 0 {
		return fmt.Errorf("%w: no dead letter %s (see `syncflow dlq list`)", errNotFound, strings.Join(missing, ", "))
	}
	wrong, err := st.DeadLetterUIDs(ctx, store.DeadLetterFilter{UIDs: uids, Resolved: verb != "purge", Unresolved: verb == "purge"})
	if err != nil {
		return err
	}
	if len(wrong) > 0 {
		if verb == "purge" {
			return fmt.Errorf("dead letter %s is not resolved: purge deletes resolved dead letters only (resolve it first, or leave it out)", joinUIDs(wrong))
		}
		return fmt.Errorf("dead letter %s is %w (leave it out)", joinUIDs(wrong), store.ErrAlreadyResolved)
	}
	return nil
}

func missingUIDs(want, found []uuid.UUID) []string {
	have := map[uuid.UUID]bool{}
	for _, u := range found {
		have[u] = true
	}
	var missing []string
	for _, u := range want {
		if !have[u] {
			missing = append(missing, u.String())
		}
	}
	return missing
}

func joinUIDs(uids []uuid.UUID) string {
	s := make([]string, len(uids))
	for i, u := range uids {
		s[i] = u.String()
	}
	return strings.Join(s, ", ")
}

// retryDeadLetters re-runs the chosen dead letters through the current pipeline,
// 500 to a transaction.
func retryDeadLetters(ctx context.Context, c common, defs definitions, st *store.Store, sf store.DeadLetterFilter) error {
	chosen, err := st.DeadLetterUIDs(ctx, sf)
	if err != nil {
		return err
	}
	wb, err := openWorkbench(ctx, c, defs)
	if err != nil {
		return err
	}
	defer wb.Close()
	var total deadletter.RetryResult
	for start := 0; start < len(chosen); start += 500 {
		chunk := chosen[start:min(start+500, len(chosen))]
		res, err := wb.dls.Retry(ctx, wb.cat, wb.rules, "cli", deadletter.Selection{UIDs: chunk})
		if err != nil {
			return fmt.Errorf("after %d retried: %w", total.Retried, err)
		}
		total.Retried += res.Retried
		total.Resolved += res.Resolved
		total.FailedAgain += res.FailedAgain
	}
	fmt.Printf("retried %d dead letters: %d resolved, %d failed again\n", total.Retried, total.Resolved, total.FailedAgain)
	if total.FailedAgain > 0 {
		return fmt.Errorf("%d dead letters failed again: see `syncflow dlq list --unresolved`", total.FailedAgain)
	}
	return nil
}

// retries shows the retries of a dead letter: of how many automatic ones, or that
// its stage is retried by hand (but for a message of an entity the catalog
// does not have, retried when the catalog gains it).
func retries(d store.DeadLetterInfo, cat *catalog.Catalog) string {
	if !pipeline.Stage(d.Stage).Retried() {
		if _, known := cat.Entity(d.Entity); !known && pipeline.Stage(d.Stage) == pipeline.StageDecode {
			return fmt.Sprintf("%d (by hand, or when its entity joins the catalog)", d.RetryCount)
		}
		return fmt.Sprintf("%d (by hand only)", d.RetryCount)
	}
	return fmt.Sprintf("%d of %d", d.RetryCount, d.MaxRetries)
}
