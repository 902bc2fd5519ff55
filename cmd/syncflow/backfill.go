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

func backfillCmd(ctx context.Context, args []string) error {
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
	host, _ := os.Hostname()
	f := newFlags("backfill", "backfill [--once] [--entity E]")
	c.register(f)
	n.register(f)
	defs.register(f)
	f.string(&src.BaseURL, "apismith-url", "http://127.0.0.1:8080", "APISmith's base URL (the source of the backfill)")
	f.string(&src.Token, "apismith-token", "", "APISmith bearer token (prefer the environment variable)")
	f.duration(&src.Timeout, "apismith-timeout", 30*time.Second, "timeout of one request to APISmith")
	f.duration(&src.RetryFor, "apismith-retry-for", 2*time.Minute, "retry a failing APISmith request (5xx, network, malformed page) this long")
	f.BoolVar(&once, "once", false, "run the due schedules once and exit (for cron); otherwise loop")
	f.StringVar(&entity, "entity", "", "only this entity's schedule")
	f.string(&replica, "replica", host, "name of this process in sync_batches")
	f.duration(&interval, "interval", time.Minute, "loop: how often to look for due schedules")
	f.int(&inFlight, "publish-in-flight", 2000, "most messages published and not yet acknowledged")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return fmt.Errorf("%w: backfill takes no arguments (did you mean --entity %s?)", errUsage, f.Arg(0))
	}
	log, err := c.logger(os.Stderr)
	if err != nil {
		return err
	}
	cat, err := defs.catalog()
	if err != nil {
		return err
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
	runner := &backfill.Runner{Store: st, Source: &src, Publisher: &stream.Publisher{JS: js}, Catalog: cat, Replica: replica, Logger: log}
	for {
		results, err := runner.RunDue(ctx, entity)
		for _, r := range results {
			next := "-"
			if r.NextRun != nil {
				next = r.NextRun.UTC().Format(time.RFC3339)
			}
			switch {
			case r.Skipped != "":
				log.Info("backfill skipped", "entity", r.Entity, "reason", r.Skipped, "next_run_at", next)
			default:
				log.Info("backfill run", "entity", r.Entity, "published", r.Published, "completed", r.Completed, "next_run_at", next)
			}
			if once {
				fmt.Printf("%s: published %d rows, completed %v, next run %s\n", r.Entity, r.Published, r.Completed, next)
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

func scheduleCmd(ctx context.Context, args []string) error {
	var (
		c                  common
		defs               definitions
		window, tz         string
		days, pageSize     int
		continuous, asJSON bool
	)
	f := newFlags("schedule", "schedule [flags] list | set ENTITY [--window 19:00-07:00] [--tz Europe/Stockholm] [--days 7] | enable ENTITY | disable ENTITY | reset ENTITY")
	c.register(f)
	defs.register(f)
	f.StringVar(&window, "window", "", "set: the nightly window START-END in the time zone, e.g. 19:00-07:00")
	f.StringVar(&tz, "tz", "", "set: the window's IANA time zone, e.g. Europe/Stockholm")
	f.IntVar(&days, "days", 0, "set: nights to spread one full load over")
	f.IntVar(&pageSize, "page-size", 0, "set: rows per page read from APISmith")
	f.BoolVar(&continuous, "continuous", false, "set: start a new cycle after a complete one")
	f.BoolVar(&asJSON, "json", false, "list: JSON for scripts")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() == 0 {
		return fmt.Errorf("%w: say what to do: list, set, enable, disable or reset (see --help)", errUsage)
	}
	action := f.Arg(0)
	if action != "list" && f.NArg() != 2 {
		return fmt.Errorf("%w: %s takes one entity name", errUsage, action)
	}
	entity := f.Arg(1)
	if action != "list" {
		cat, err := defs.catalog()
		if err != nil {
			return err
		}
		if _, ok := cat.Entity(entity); !ok {
			return fmt.Errorf("%w: entity %q is not in the catalog", errNotFound, entity)
		}
	}
	st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
	if err != nil {
		return err
	}
	defer st.Close()
	notFound := func(err error) error {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: %s has no schedule: create it with `syncflow schedule set %s`", errNotFound, entity, entity)
		}
		return err
	}
	switch action {
	case "list":
		list, err := st.Schedules(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			if list == nil {
				list = []store.Schedule{}
			}
			return printJSON(list)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ENTITY\tENABLED\tWINDOW\tDAYS\tPROGRESS\tPER NIGHT\tNEXT RUN\tLAST ERROR")
		for _, s := range list {
			progress := fmt.Sprintf("%d", s.Offset)
			if s.TotalRows != nil {
				progress = fmt.Sprintf("%d/%d", s.Offset, *s.TotalRows)
			}
			if s.Completed != nil && s.TotalRows != nil {
				progress += " (complete)"
			}
			perNight, next, lastErr := "-", "-", "-"
			if s.RowsPerDay != nil {
				perNight = fmt.Sprint(*s.RowsPerDay)
			}
			if s.NextRun != nil {
				next = s.NextRun.UTC().Format("2006-01-02 15:04Z")
			}
			if s.LastError != nil {
				lastErr = *s.LastError
			}
			fmt.Fprintf(tw, "%s\t%v\t%s-%s %s\t%d\t%s\t%s\t%s\t%s\n", s.Entity, s.Enabled, s.WindowStart, s.WindowEnd, s.TimeZone, s.Days, progress, perNight, next, lastErr)
		}
		if len(list) == 0 {
			fmt.Fprintln(tw, "(no schedules: create one with `syncflow schedule set ENTITY --window 19:00-07:00 --tz UTC --days 7`)")
		}
		return tw.Flush()
	case "set":
		var set store.ScheduleSettings
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
		fmt.Printf("%s: window %s-%s %s, %d days, %s\n", entity, s.WindowStart, s.WindowEnd, s.TimeZone, s.Days, state)
		return nil
	case "enable", "disable":
		if err := notFound(st.EnableSchedule(ctx, entity, action == "enable")); err != nil {
			return err
		}
		fmt.Printf("%s: %sd\n", entity, action)
		return nil
	case "reset":
		if err := notFound(st.ResetSchedule(ctx, entity)); err != nil {
			return err
		}
		fmt.Printf("%s: the next run starts a new cycle from the first row\n", entity)
		return nil
	}
	return fmt.Errorf("%w: unknown schedule action %q: use list, set, enable, disable or reset", errUsage, strings.TrimSpace(action))
}
