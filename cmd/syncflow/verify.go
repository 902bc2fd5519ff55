package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/backfill"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/stream"
)

// errDrift marks a verification that found drift: exit code 4.
var errDrift = errors.New("drift found")

func verifyCommand() command {
	return command{path: "verify", summary: "compare entities with APISmith and ScheduleHub, and repair what differs (exit 4: drift found)", setup: setupVerify}
}

// registerSource registers the flags of APISmith's client.
func registerSource(f *flags, src *backfill.HTTPSource) {
	f.string(&src.BaseURL, "apismith-url", "http://127.0.0.1:8080", "APISmith's base URL (the source)")
	f.string(&src.Token, "apismith-token", "", "APISmith bearer token (prefer the environment variable)")
	f.duration(&src.Timeout, "apismith-timeout", 30*time.Second, "timeout of one request to APISmith")
	f.duration(&src.RetryFor, "apismith-retry-for", 2*time.Minute, "retry a failing APISmith request (5xx, network, malformed page) this long")
}

type verifyFlags struct {
	c        common
	n        natsFlags
	defs     definitions
	src      backfill.HTTPSource
	entities stringList
	asJSON   bool
	opt      backfill.VerifyOptions
	settle   time.Duration
	pageSize int
	profile  string
}

// stringList is a flag that may be given more than once.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

func setupVerify(f *flags) runFunc {
	var v verifyFlags
	v.c.register(f)
	v.n.register(f)
	v.defs.register(f)
	registerSource(f, &v.src)
	f.Var(&v.entities, "entity", "verify this entity (repeat for several; default: every entity of the catalog)")
	f.BoolVar(&v.asJSON, "json", false, "print the result as JSON, for scripts")
	f.BoolVar(&v.opt.Repair, "repair", false, "publish the drifted rows on the backfill stream (see the README's section on verification)")
	f.BoolVar(&v.opt.DryRun, "dry-run", false, "with --repair: show what would be published; publish nothing")
	f.BoolVar(&v.opt.DeleteExtra, "delete-extra", false, "with --repair: also delete the extra rows (applied, absent from the source)")
	f.int(&v.opt.Samples, "samples", 5, "sample keys shown per kind")
	f.duration(&v.settle, "settle", 2*time.Second, "wait this long before looking again at missing and stale rows (events in flight)")
	f.int(&v.pageSize, "page-size", 5000, "keys read per page of the source")
	f.string(&v.profile, "cpu-profile", "", "diagnostics: write a CPU profile (pprof) of the verification to this file")
	return func(ctx context.Context, _ []string) error { return runVerify(ctx, v) }
}

func runVerify(ctx context.Context, v verifyFlags) error {
	switch {
	case (v.opt.DryRun || v.opt.DeleteExtra) && !v.opt.Repair:
		return fmt.Errorf("%w: --dry-run and --delete-extra go with --repair (verify alone changes nothing)", errUsage)
	case v.opt.Samples < 1 || v.opt.Samples > 1000:
		return fmt.Errorf("%w: --samples must be between 1 and 1000", errUsage)
	case v.pageSize < 1 || v.pageSize > 10000:
		return fmt.Errorf("%w: --page-size must be between 1 and 10000", errUsage)
	case v.settle < 0:
		return fmt.Errorf("%w: --settle must not be negative", errUsage)
	}
	if err := v.src.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	stop, err := startCPUProfile(v.profile)
	if err != nil {
		return err
	}
	defer stop()
	log, err := v.c.logger(os.Stderr)
	if err != nil {
		return err
	}
	st, cat, err := openStore(ctx, v.c, v.defs)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := service.CheckSchema(ctx, st); err != nil {
		return err
	}
	var entities []string
	for _, e := range v.entities {
		if !slices.Contains(entities, e) {
			entities = append(entities, e)
		}
	}
	if len(entities) == 0 {
		entities = cat.Names()
	}
	for _, e := range entities {
		if err := knownEntity(cat, e); err != nil {
			return err
		}
	}
	if err := st.PrepareTargets(ctx, cat); err != nil {
		return err
	}
	v.src.OnRetry = func(r backfill.Retry) {
		fmt.Fprintf(os.Stderr, "waiting for APISmith at %s (%v): trying again at %s, giving up at %s (--apismith-retry-for)\n",
			r.URL, r.Err, r.Next.UTC().Format("15:04:05Z"), r.GiveUp.UTC().Format("15:04:05Z"))
	}
	ver := backfill.Verifier{Store: st, Source: &v.src, Catalog: cat, PageSize: v.pageSize, Settle: v.settle,
		NewUID: st.NewUID, Replica: defaultReplica() + "-verify", Logger: log}
	if v.settle == 0 {
		ver.Settle = time.Nanosecond
	}
	if v.opt.Repair && !v.opt.DryRun {
		v.n.cfg.Name, v.n.cfg.Logger = "syncflow-verify", log
		nc, err := stream.Connect(v.n.cfg)
		if err != nil {
			return fmt.Errorf("%w (is NATS running? repairing publishes on the backfill stream)", err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2000), jetstream.WithPublishAsyncTimeout(30*time.Second))
		if err != nil {
			return err
		}
		ver.Publisher = &stream.Publisher{JS: js}
	}
	v.opt.Trigger, v.opt.Record = "cli", !v.opt.DryRun
	var results []backfill.VerifyResult
	drift := false
	for _, e := range entities {
		res, err := ver.Verify(ctx, e, v.opt)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("verifying %s: interrupted before it finished (nothing of it is kept but a failed verification)", e)
			}
			return fmt.Errorf("verifying %s: %w", e, err)
		}
		results = append(results, res)
		drift = drift || res.Drifted()
	}
	if v.asJSON {
		err = printVerifyJSON(results, v.opt)
	} else {
		printVerifyTable(results, v.opt)
	}
	if err != nil {
		return err
	}
	if drift {
		return fmt.Errorf("%w: %s", errDrift, nextStep(results, v.opt))
	}
	return nil
}

// nextStep says what to do about the drift results found.
func nextStep(results []backfill.VerifyResult, opt backfill.VerifyOptions) string {
	var names []string
	onlyExtra := true
	for _, r := range results {
		if !r.Drifted() {
			continue
		}
		names = append(names, "--entity "+r.Entity)
		for _, k := range backfill.DriftKinds {
			if k != backfill.Extra && k.IsDrift() && r.Comparison.Counts[k] > 0 {
				onlyExtra = false
			}
		}
	}
	which := strings.Join(names, " ")
	switch {
	case opt.Repair && opt.DryRun:
		return fmt.Sprintf("run `syncflow verify %s --repair` to publish the repairs", which)
	case opt.Repair && onlyExtra && !opt.DeleteExtra:
		return fmt.Sprintf("only extra rows are left: `syncflow verify %s --repair --delete-extra` deletes them", which)
	case opt.Repair:
		return "the repairs are published; run verify again once the consumers have caught up"
	}
	return fmt.Sprintf("`syncflow verify %s --repair --dry-run` shows what a repair would publish", which)
}

// rows is n with "row" or "rows".
func rows(n int64) string {
	if n == 1 {
		return "1 row"
	}
	return fmt.Sprintf("%d rows", n)
}

func printVerifyTable(results []backfill.VerifyResult, opt backfill.VerifyOptions) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "ENTITY\tSOURCE\tLEDGER")
	for _, k := range backfill.DriftKinds {
		fmt.Fprintf(tw, "\t%s", strings.ToUpper(string(k)))
	}
	fmt.Fprintln(tw, "\tTOOK")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%d", r.Entity, r.Comparison.SourceRows, r.Comparison.LedgerRows)
		for _, k := range backfill.DriftKinds {
			fmt.Fprintf(tw, "\t%d", r.Comparison.Counts[k])
		}
		fmt.Fprintf(tw, "\t%v\n", r.Duration.Round(time.Millisecond))
	}
	tw.Flush()
	for _, r := range results {
		for _, k := range backfill.DriftKinds {
			if keys := r.Comparison.Samples[k]; len(keys) > 0 {
				shown := make([]string, len(keys))
				for i, key := range keys {
					shown[i] = backfill.FormatKey(key)
				}
				more := ""
				if n := r.Comparison.Counts[k]; n > int64(len(keys)) {
					more = fmt.Sprintf(" (and %d more)", n-int64(len(keys)))
				}
				fmt.Printf("%s %s: %s%s\n", r.Entity, k, strings.Join(shown, ", "), more)
			}
		}
		if !opt.Repair {
			continue
		}
		var plan []string
		for _, k := range backfill.DriftKinds {
			if n := r.Plan[k]; n > 0 {
				plan = append(plan, fmt.Sprintf("%d %s", n, k))
			}
		}
		if n := r.Comparison.Counts[backfill.Extra]; n > 0 && !opt.DeleteExtra {
			plan = append(plan, fmt.Sprintf("%d extra reported, not deleted (--delete-extra deletes them)", n))
		}
		switch {
		case len(plan) == 0:
			fmt.Printf("%s: nothing to repair\n", r.Entity)
		case opt.DryRun:
			fmt.Printf("%s: would publish %s (dry run: nothing was published)\n", r.Entity, strings.Join(plan, ", "))
		default:
			fmt.Printf("%s: published %s to repair %s", r.Entity, rows(r.Published), strings.Join(plan, ", "))
			if r.Vanished > 0 {
				fmt.Printf("; %s drifted were gone from the source when fetched", rows(r.Vanished))
			}
			fmt.Println("; run verify again once the consumers have caught up")
		}
	}
}

func printVerifyJSON(results []backfill.VerifyResult, opt backfill.VerifyOptions) error {
	type entity struct {
		Entity     string              `json:"entity"`
		UID        string              `json:"uid,omitempty"`
		SourceRows int64               `json:"source_rows"`
		LedgerRows int64               `json:"ledger_rows"`
		Counts     map[string]int64    `json:"counts"`
		Samples    map[string][]string `json:"samples"`
		InSync     bool                `json:"in_sync"`
		DurationMS int64               `json:"duration_ms"`
		ScanMS     int64               `json:"scan_ms"`
		CompareMS  int64               `json:"compare_ms"`
		Plan       map[string]int64    `json:"repair_plan,omitempty"`
		Published  *int64              `json:"published,omitempty"`
		Vanished   *int64              `json:"vanished,omitempty"`
	}
	out := struct {
		InSync   bool     `json:"in_sync"`
		DryRun   bool     `json:"dry_run,omitempty"`
		Entities []entity `json:"entities"`
	}{InSync: true, DryRun: opt.DryRun}
	for _, r := range results {
		e := entity{Entity: r.Entity, SourceRows: r.Comparison.SourceRows, LedgerRows: r.Comparison.LedgerRows,
			Counts: map[string]int64{}, Samples: map[string][]string{}, InSync: !r.Drifted(), DurationMS: r.Duration.Milliseconds(),
			ScanMS: r.Scan.Milliseconds(), CompareMS: r.Compare.Milliseconds()}
		if !opt.DryRun {
			e.UID = r.UID.String()
		}
		for _, k := range backfill.DriftKinds {
			e.Counts[string(k)] = r.Comparison.Counts[k]
			for _, key := range r.Comparison.Samples[k] {
				e.Samples[string(k)] = append(e.Samples[string(k)], backfill.FormatKey(key))
			}
		}
		if opt.Repair {
			e.Plan = map[string]int64{}
			for k, n := range r.Plan {
				e.Plan[string(k)] = n
			}
			if !opt.DryRun {
				e.Published, e.Vanished = &r.Published, &r.Vanished
			}
		}
		out.InSync = out.InSync && e.InSync
		out.Entities = append(out.Entities, e)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
