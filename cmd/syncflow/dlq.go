package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/syncflow/syncflow/internal/store"
)

func dlqCmd(ctx context.Context, args []string) error {
	var (
		c                         common
		defs                      definitions
		entity, stage, since, age string
		note                      string
		unresolved, asJSON        bool
		all, dryRun, resolved     bool
		limit                     int
	)
	f := newFlags("dlq", "dlq [flags] list | show UID | retry UID... | resolve UID --note TEXT | purge --resolved --older-than D")
	c.register(f)
	defs.register(f)
	f.StringVar(&entity, "entity", "", "list, retry: only this entity's dead letters")
	f.StringVar(&stage, "stage", "", "list, retry: only this stage (decode, normalization, mapping, parent, orphan, write, max_deliver)")
	f.StringVar(&since, "since", "", "list: only dead letters since this time (RFC 3339, a date, or a duration back: 24h, 7d)")
	f.BoolVar(&unresolved, "unresolved", false, "list: only unresolved dead letters")
	f.IntVar(&limit, "limit", 100, "list: at most this many")
	f.BoolVar(&asJSON, "json", false, "list, show: JSON for scripts")
	f.BoolVar(&all, "all", false, "retry: every unresolved dead letter")
	f.BoolVar(&dryRun, "dry-run", false, "retry: say what would be retried, do nothing")
	f.StringVar(&note, "note", "", "resolve: why it is resolved (required)")
	f.BoolVar(&resolved, "resolved", false, "purge: delete resolved dead letters (required, as a confirmation)")
	f.StringVar(&age, "older-than", "", "purge: only those resolved longer ago than this (e.g. 30d)")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() == 0 {
		return fmt.Errorf("%w: say what to do: list, show, retry, resolve or purge (see --help)", errUsage)
	}
	action, rest := f.Arg(0), f.Args()[1:]
	switch action {
	case "list", "show", "resolve", "purge":
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
		if err != nil {
			return err
		}
		defer st.Close()
		switch action {
		case "list":
			from, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			return dlqList(ctx, st, store.DeadLetterFilter{Entity: entity, Stage: stage, Since: from, Unresolved: unresolved, Limit: limit}, asJSON)
		case "show":
			if len(rest) != 1 {
				return fmt.Errorf("%w: show takes one UID", errUsage)
			}
			uids, err := parseUIDs(rest)
			if err != nil {
				return err
			}
			d, err := st.DeadLetter(ctx, uids[0])
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w: no dead letter %s (see `syncflow dlq list`)", errNotFound, uids[0])
			} else if err != nil {
				return err
			}
			if asJSON {
				return printJSON(d)
			}
			return dlqShow(d)
		case "resolve":
			if len(rest) != 1 || strings.TrimSpace(note) == "" {
				return fmt.Errorf("%w: resolve takes one UID and --note TEXT saying why", errUsage)
			}
			uids, err := parseUIDs(rest)
			if err != nil {
				return err
			}
			err = st.ResolveDeadLetter(ctx, uids[0], note)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w: no dead letter %s (see `syncflow dlq list`)", errNotFound, uids[0])
			} else if err != nil {
				return fmt.Errorf("dead letter %s: %w", uids[0], err)
			}
			fmt.Printf("resolved %s\n", uids[0])
			return nil
		default: // purge
			if !resolved || age == "" {
				return fmt.Errorf("%w: purge deletes resolved dead letters only: say --resolved --older-than AGE (e.g. 30d)", errUsage)
			}
			d, err := parseAge(age)
			if err != nil {
				return err
			}
			n, err := st.PurgeDeadLetters(ctx, time.Now().Add(-d))
			if err != nil {
				return err
			}
			fmt.Printf("purged %d resolved dead letters resolved more than %s ago\n", n, age)
			return nil
		}
	case "retry":
		return dlqRetry(ctx, c, defs, rest, store.DeadLetterSelection{Entity: entity, Stage: stage}, all, dryRun)
	}
	return fmt.Errorf("%w: unknown dlq action %q: use list, show, retry, resolve or purge", errUsage, action)
}

func dlqList(ctx context.Context, st *store.Store, filter store.DeadLetterFilter, asJSON bool) error {
	list, err := st.ListDeadLetters(ctx, filter)
	if err != nil {
		return err
	}
	if asJSON {
		if list == nil {
			list = []store.DeadLetterInfo{}
		}
		return printJSON(list)
	}
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
		msg := d.Error
		if len(msg) > 90 {
			msg = msg[:87] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", d.UID, d.Entity, d.Stage, ago(d.CreatedAt), d.RetryCount, d.MaxRetries, state, msg)
	}
	if len(list) == 0 {
		fmt.Fprintln(tw, "(no dead letters match)")
	}
	return tw.Flush()
}

func dlqShow(d store.DeadLetterInfo) error {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "uid\t%s\n", d.UID)
	fmt.Fprintf(w, "entity\t%s\n", d.Entity)
	fmt.Fprintf(w, "stage\t%s\n", d.Stage)
	fmt.Fprintf(w, "error\t%s\n", d.Error)
	fmt.Fprintf(w, "message\t%s seq %d (%s)\n", d.Stream, d.StreamSeq, d.Subject)
	fmt.Fprintf(w, "created\t%s (%s ago)\n", d.CreatedAt.UTC().Format(time.RFC3339), ago(d.CreatedAt))
	fmt.Fprintf(w, "retries\t%d of %d\n", d.RetryCount, d.MaxRetries)
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

func dlqRetry(ctx context.Context, c common, defs definitions, args []string, sel store.DeadLetterSelection, all, dryRun bool) error {
	if len(args) == 0 && sel.Entity == "" && sel.Stage == "" && !all {
		return fmt.Errorf("%w: say which dead letters to retry: UIDs, --entity E, --stage S or --all", errUsage)
	}
	uids, err := parseUIDs(args)
	if err != nil {
		return err
	}
	wb, err := openWorkbench(ctx, c, defs)
	if err != nil {
		return err
	}
	defer wb.Close()
	sel.UIDs = uids
	chosen, err := wb.st.UnresolvedDeadLetters(ctx, sel)
	if err != nil {
		return err
	}
	if len(uids) > 0 && len(chosen) < len(uids) {
		found := map[string]bool{}
		for _, u := range chosen {
			found[u.String()] = true
		}
		var missing []string
		for _, u := range uids {
			if !found[u.String()] {
				missing = append(missing, u.String())
			}
		}
		return fmt.Errorf("%w: no unresolved dead letter %s (see `syncflow dlq list --unresolved`)", errNotFound, strings.Join(missing, ", "))
	}
	if dryRun {
		fmt.Printf("would retry %d dead letters\n", len(chosen))
		for _, u := range chosen {
			fmt.Println(u)
		}
		return nil
	}
	var total store.RetryResult
	for start := 0; start < len(chosen); start += 500 {
		chunk := chosen[start:min(start+500, len(chosen))]
		res, err := wb.st.RetryDeadLetters(ctx, wb.cat, wb.rules, "cli", store.DeadLetterSelection{UIDs: chunk, Limit: len(chunk)})
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
