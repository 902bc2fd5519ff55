package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/backfill"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
)

func backfillCommand() command {
	return command{path: "backfill", summary: "publish the due nightly backfills from APISmith (--once for cron)", setup: setupBackfill}
}

func setupBackfill(f *flags) runFunc {
	var (
		c        common
		n        natsFlags
		defs     definitions
		src      backfill.HTTPSource
		once     bool
		entity   string
		replica  string
		interval time.Duration
		inFlight int
	)
	c.register(f)
	n.register(f)
	defs.register(f)
	registerSource(f, &src)
	f.BoolVar(&once, "once", false, "run the due schedules once and exit (for cron); otherwise loop")
	f.StringVar(&entity, "entity", "", "only this entity's schedule")
	f.string(&replica, "replica", defaultReplica()+"-backfill", "name of this process in sync_batches (default: the host name and -backfill: 'syncflow run', which closes the running batches of its own name at start, must not take it)")
	f.duration(&interval, "interval", time.Minute, "loop: how often to look for due schedules")
	f.int(&inFlight, "publish-in-flight", 2000, "most messages published and not yet acknowledged")
	return func(ctx context.Context, _ []string) error {
		return runBackfill(ctx, c, n, defs, &src, once, entity, replica, interval, inFlight)
	}
}

func runBackfill(ctx context.Context, c common, n natsFlags, defs definitions, src *backfill.HTTPSource, once bool, entity, replica string, interval time.Duration, inFlight int) error {
	log, err := c.logger(os.Stderr)
	if err != nil {
		return err
	}
	cat, err := defs.catalog(ctx, c.databaseURL)
	if err != nil {
		return err
	}
	if entity != "" {
		if err := knownEntity(cat, entity); err != nil {
			return err
		}
	}
	st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 4})
	if err != nil {
		return err
	}
	defer st.Close()
	if err := service.CheckSchema(ctx, st); err != nil {
		return err
	}
	n.cfg.Name, n.cfg.Logger = "syncflow-backfill-"+replica, log
	nc, err := stream.Connect(n.cfg)
	if err != nil {
		return fmt.Errorf("%w (is NATS running?)", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(inFlight), jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		return err
	}
	// While the source is down, say what is being waited for and when it is
	// tried next; a cron run would otherwise sit silent for minutes.
	src.OnRetry = func(r backfill.Retry) {
		log.Warn("APISmith is not answering; trying again", "url", r.URL, "err", r.Err,
			"retry_in", time.Until(r.Next).Round(100*time.Millisecond), "give_up_at", r.GiveUp.UTC().Format(time.RFC3339))
		if once {
			fmt.Fprintf(os.Stderr, "waiting for APISmith at %s (%v): trying again at %s, giving up at %s (--apismith-retry-for)\n",
				r.URL, r.Err, r.Next.UTC().Format("15:04:05Z"), r.GiveUp.UTC().Format("15:04:05Z"))
		}
	}
	if err := st.PrepareTargets(ctx, cat); err != nil {
		// Only a verify night compares with the targets; it fails (and says so
		// on its schedule) until they are ready.
		log.Warn("the target tables are not all ready: schedules in verify mode fail until they are", "err", err)
	}
	runner := &backfill.Runner{Store: st, Source: src, Publisher: &stream.Publisher{JS: js}, Catalog: cat, Replica: replica, Logger: log, NewUID: st.NewUID}
	for {
		results, err := runner.RunDue(ctx, entity)
		for _, r := range results {
			// The next run as the schedule records it, which `schedule list`
			// shows too (a failed run is due again later, whatever it returned).
			next := "-"
			sc, serr := st.Schedule(context.WithoutCancel(ctx), r.Entity)
			if serr == nil {
				next = nextRun(sc.NextRun)
			} else if r.NextRun != nil {
				next = nextRun(r.NextRun)
			}
			switch {
			case r.Skipped != "":
				log.Info("backfill skipped", "entity", r.Entity, "reason", r.Skipped, "next_run_at", next)
			default:
				log.Info("backfill run", "entity", r.Entity, "published", r.Published, "completed", r.Completed, "next_run_at", next)
			}
			if once {
				state := fmt.Sprintf("completed %v", r.Completed)
				if serr == nil && sc.LastError != nil {
					state = "failed: " + clip(*sc.LastError, 200)
				}
				switch v := r.Verified; {
				case v != nil && !strings.HasPrefix(state, "failed"):
					var drifted int64
					for k, n := range v.Comparison.Counts {
						if k.IsDrift() {
							drifted += n
						}
					}
					rest := ""
					if v.Capped {
						rest = " (the night's quota is done: the rest next night)"
					}
					fmt.Printf("%s: verify night: %d rows drifted, published %d%s, next run %s\n", r.Entity, drifted, r.Published, rest, next)
				case r.Skipped != "":
					fmt.Printf("%s: nothing published (%s), next run %s\n", r.Entity, r.Skipped, next)
				default:
					fmt.Printf("%s: published %d rows, %s, next run %s\n", r.Entity, r.Published, state, next)
				}
			}
		}
		if once {
			if len(results) == 0 {
				fmt.Println("no schedule is due (see `syncflow schedule list`)")
			}
			return err
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Error("backfill run failed; its schedule is retried later", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

func scheduleCommands() []command {
	withEntity := func(path, summary string, do func(ctx context.Context, st *store.Store, entity string, dryRun bool) error, dry bool) command {
		return command{path: path, args: "ENTITY", minArgs: 1, maxArgs: 1, summary: summary, setup: func(f *flags) runFunc {
			var (
				c      common
				defs   definitions
				dryRun bool
			)
			c.register(f)
			defs.register(f)
			if dry {
				f.BoolVar(&dryRun, "dry-run", false, "say what would be reset; change nothing")
			}
			return func(ctx context.Context, args []string) error {
				st, cat, err := openStore(ctx, c, defs)
				if err != nil {
					return err
				}
				defer st.Close()
				if err := knownEntity(cat, args[0]); err != nil {
					return err
				}
				err = do(ctx, st, args[0], dryRun)
				if errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("%w: %s has no schedule: create it with `syncflow schedule set %s`", errNotFound, args[0], args[0])
				}
				return err
			}
		}}
	}
	enable := func(on bool) func(ctx context.Context, st *store.Store, entity string, _ bool) error {
		return func(ctx context.Context, st *store.Store, entity string, _ bool) error {
			if err := st.EnableSchedule(ctx, entity, on); err != nil {
				return err
			}
			fmt.Printf("%s: %s\n", entity, map[bool]string{true: "enabled", false: "disabled"}[on])
			return nil
		}
	}
	return []command{
		{path: "schedule list", summary: "every schedule: window, progress, rows per night, next run, last error", setup: setupScheduleList},
		{path: "schedule set", args: "ENTITY", minArgs: 1, maxArgs: 1, summary: "create or change an entity's schedule (a new one starts disabled)", setup: setupScheduleSet},
		withEntity("schedule enable", "let the backfill run the entity's schedule", enable(true), false),
		withEntity("schedule disable", "stop the backfill from running the entity's schedule", enable(false), false),
		withEntity("schedule reset", "start the cycle again from the first row at the next run", func(ctx context.Context, st *store.Store, entity string, dryRun bool) error {
			sc, err := st.Schedule(ctx, entity)
			if err != nil {
				return err
			}
			progress := fmt.Sprint(sc.Offset)
			if sc.TotalRows != nil {
				progress = fmt.Sprintf("%d of %d", sc.Offset, *sc.TotalRows)
			}
			if dryRun {
				fmt.Printf("would reset %s: its progress (%s rows) is forgotten and the next run counts the rows and starts again from the first\n(dry run: nothing was changed)\n", entity, progress)
				return nil
			}
			if err := st.ResetSchedule(ctx, entity); err != nil {
				return err
			}
			fmt.Printf("%s: reset (it was at %s rows); the next run starts a new cycle from the first row\n", entity, progress)
			return nil
		}, true),
	}
}

func setupScheduleList(f *flags) runFunc {
	var (
		c      common
		asJSON bool
	)
	c.register(f)
	f.BoolVar(&asJSON, "json", false, "JSON for scripts")
	return func(ctx context.Context, _ []string) error {
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
		if err != nil {
			return err
		}
		defer st.Close()
		list, err := st.Schedules(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			if list == nil {
				list = []backfill.Schedule{}
			}
			return printJSON(list)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ENTITY\tENABLED\tMODE\tWINDOW\tDAYS\tPROGRESS\tPER NIGHT\tNEXT RUN\tLAST ERROR")
		for _, s := range list {
			progress := fmt.Sprintf("%d", s.Offset)
			if s.TotalRows != nil {
				progress = fmt.Sprintf("%d/%d", s.Offset, *s.TotalRows)
			}
			if s.Completed != nil && s.TotalRows != nil {
				progress += " (complete)"
			}
			perNight, lastErr := "-", "-"
			if s.RowsPerDay != nil {
				perNight = fmt.Sprint(*s.RowsPerDay)
			}
			if s.LastError != nil {
				lastErr = clip(*s.LastError, 60)
			}
			fmt.Fprintf(tw, "%s\t%v\t%s\t%s-%s %s\t%d\t%s\t%s\t%s\t%s\n", s.Entity, s.Enabled, s.Mode, s.WindowStart, s.WindowEnd, s.TimeZone, s.Days, progress, perNight, nextRun(s.NextRun), lastErr)
		}
		if len(list) == 0 {
			fmt.Fprintln(tw, "(no schedules: create one with `syncflow schedule set ENTITY --window 19:00-07:00 --tz UTC --days 7`)")
		}
		return tw.Flush()
	}
}

// nextRun is how schedule list and backfill print a schedule's next run.
func nextRun(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func setupScheduleSet(f *flags) runFunc {
	var (
		c              common
		defs           definitions
		window, tz     string
		days, pageSize int
		continuous     bool
		mode           string
	)
	c.register(f)
	defs.register(f)
	f.StringVar(&window, "window", "", "the nightly window START-END in the time zone, e.g. 19:00-07:00")
	f.StringVar(&tz, "tz", "", "the window's IANA time zone, e.g. Europe/Stockholm")
	f.IntVar(&days, "days", 0, "nights to spread one full load over")
	f.IntVar(&pageSize, "page-size", 0, "rows per page read from APISmith (1 to 10000)")
	f.BoolVar(&continuous, "continuous", false, "start a new cycle after a complete one")
	f.StringVar(&mode, "mode", "", "publish (every row, over the cycle's nights) or verify (each night, compare with the source and publish only the drifted rows)")
	return func(ctx context.Context, args []string) error {
		entity := args[0]
		var set backfill.Settings
		switch mode {
		case "":
		case backfill.ModePublish, backfill.ModeVerify:
			set.Mode = &mode
		default:
			return fmt.Errorf("%w: --mode %q is not publish or verify", errUsage, mode)
		}
		if window != "" {
			start, end, err := backfill.ParseWindow(window)
			if err != nil {
				return fmt.Errorf("%w: --window: %v", errUsage, err)
			}
			a, b := start.String(), end.String()
			set.WindowStart, set.WindowEnd = &a, &b
		}
		if tz != "" {
			if _, err := time.LoadLocation(tz); err != nil {
				return fmt.Errorf("%w: --tz %q is not a time zone (use an IANA name such as Europe/Stockholm)", errUsage, tz)
			}
			set.TimeZone = &tz
		}
		if days != 0 {
			if days < 0 {
				return fmt.Errorf("%w: --days must be positive", errUsage)
			}
			set.Days = &days
		}
		if pageSize != 0 {
			if pageSize < 1 || pageSize > 10000 {
				return fmt.Errorf("%w: --page-size must be 1..10000", errUsage)
			}
			set.PageSize = &pageSize
		}
		f.Visit(func(fl *flag.Flag) {
			if fl.Name == "continuous" {
				set.Continuous = &continuous
			}
		})
		st, cat, err := openStore(ctx, c, defs)
		if err != nil {
			return err
		}
		defer st.Close()
		if err := knownEntity(cat, entity); err != nil {
			return err
		}
		if err := st.SetSchedule(ctx, entity, set); err != nil {
			return err
		}
		s, err := st.Schedule(ctx, entity)
		if err != nil {
			return err
		}
		state := "disabled: enable it with `syncflow schedule enable " + entity + "`"
		if s.Enabled {
			state = "enabled"
		}
		fmt.Printf("%s: %s mode, window %s-%s %s, %d days, %s\n", entity, s.Mode, s.WindowStart, s.WindowEnd, s.TimeZone, s.Days, state)
		return nil
	}
}
