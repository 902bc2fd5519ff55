package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
)

func pruneCommand() command {
	return command{path: "prune", summary: "remove old batches, resolved dead letters and old tombstones: --older-than 90d, --tombstones-older-than 60d", setup: setupPrune}
}

func setupPrune(f *flags) runFunc {
	var (
		c          common
		n          natsFlags
		age, tombs string
		archive    string
		dryRun     bool
	)
	c.register(f)
	n.register(f)
	f.StringVar(&age, "older-than", "", "remove the batches finished and the dead letters resolved longer ago than this (e.g. 90d)")
	f.StringVar(&tombs, "tombstones-older-than", "", "remove the ledger's tombstones (keys last deleted) older than this (e.g. 60d); refused when shorter than the streams' max age plus the longest backfill cycle")
	f.StringVar(&archive, "archive", "", "append every removed row to this file as JSON lines ({\"table\":...,\"row\":...}); a row is removed only once the file holds it")
	f.BoolVar(&dryRun, "dry-run", false, "count what would be removed, remove nothing")
	return func(ctx context.Context, _ []string) error {
		if age == "" && tombs == "" {
			return fmt.Errorf("%w: say how old: --older-than 90d (batches and resolved dead letters), --tombstones-older-than 60d (the ledger's tombstones), or both", errUsage)
		}
		var d, td time.Duration
		var err error
		if age != "" {
			if d, err = parseRetention("--older-than", age); err != nil {
				return err
			}
		}
		if tombs != "" {
			if td, err = parseRetention("--tombstones-older-than", tombs); err != nil {
				return err
			}
		}
		st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
		if err != nil {
			return err
		}
		defer st.Close()
		if tombs != "" {
			b, err := tombstoneBound(ctx, st, c, n)
			if err != nil {
				return err
			}
			if td < b.total {
				return fmt.Errorf("%w: --tombstones-older-than %s is shorter than %s, %s: a tombstone is what keeps an older event of a deleted key from bringing its row back, and such an event can still arrive for that long",
					errUsage, tombs, days(b.total), b.why)
			}
		}
		now := time.Now()
		if !dryRun {
			// The months ahead, in case no service has run for a while.
			if _, err := st.EnsurePartitions(ctx, now); err != nil {
				return err
			}
		}
		if dryRun {
			to := ""
			if archive != "" {
				to = " (archiving them to " + archive + ")"
			}
			if age != "" {
				months, err := st.DropMonths(ctx, now.Add(-d), true, nil, lockWait)
				if err != nil {
					return err
				}
				printMonths(months, true)
				if err := printStranded(ctx, st); err != nil {
					return err
				}
				res, err := st.Prune(ctx, now.Add(-d), true, nil)
				if err != nil {
					return err
				}
				fmt.Printf("would remove %d resolved dead letters and %d batches older than %s%s, in all (the whole months above, the rest row by row)\n", res.DeadLetters, res.Batches, age, to)
			}
			if tombs != "" {
				t, err := st.PruneTombstones(ctx, now.Add(-td), true, nil)
				if err != nil {
					return err
				}
				fmt.Printf("would remove %d tombstones older than %s%s\n", t, tombs, to)
			}
			fmt.Println("(dry run: nothing was changed)")
			return nil
		}
		var sink *fileArchive
		var sinkArg store.Archive
		if archive != "" {
			if sink, err = openArchive(archive); err != nil {
				return err
			}
			sinkArg = sink
		}
		if age != "" {
			var months []store.Month
			months, err = st.DropMonths(ctx, now.Add(-d), false, sinkArg, lockWait)
			printMonths(months, false)
			if err == nil {
				err = printStranded(ctx, st)
			}
			if err == nil {
				var res store.PruneResult
				res, err = st.Prune(ctx, now.Add(-d), false, sinkArg)
				fmt.Printf("removed %d resolved dead letters and %d batches older than %s\n", res.DeadLetters, res.Batches, age)
			}
		}
		if tombs != "" && err == nil {
			var t int64
			t, err = st.PruneTombstones(ctx, now.Add(-td), false, sinkArg)
			fmt.Printf("removed %d tombstones older than %s\n", t, tombs)
		}
		if sink != nil {
			if cerr := sink.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
		if err != nil {
			return fmt.Errorf("pruning stopped; what was removed is in the archive, the rest is still in place: %w", err)
		}
		return nil
	}
}

// lockWait is how long prune waits for the locks that drop a month: a month
// whose locks stay busy longer (a long query on the table) is kept for the next
// prune, so writers never queue behind prune for more than this.
const lockWait = 2 * time.Second

// printMonths says which whole months went (or would go) and which past
// retention stay, and why.
func printMonths(months []store.Month, dryRun bool) {
	verb := "dropped"
	if dryRun {
		verb = "would drop"
	}
	for _, m := range months {
		if m.Kept == "" {
			fmt.Printf("%s %s %s (%d rows)\n", verb, m.Table, m.Start.Format("2006-01"), m.Rows)
		}
	}
	for _, m := range months {
		if m.Kept != "" {
			fmt.Printf("kept %s %s whole: %s; its rows past retention are removed one by one\n", m.Table, m.Start.Format("2006-01"), m.Kept)
		}
	}
}

// printStranded says how many rows sit in a DEFAULT partition: months that no
// process made in time, or uids that are not UUIDv7. They are pruned row by row.
func printStranded(ctx context.Context, st *store.Store) error {
	stranded, err := st.StrandedRows(ctx)
	if err != nil {
		return err
	}
	for _, table := range slices.Sorted(maps.Keys(stranded)) {
		fmt.Printf("%d rows of %s are in its DEFAULT partition (their month was not made in time, or their uid is not a UUIDv7): they are pruned row by row\n", stranded[table], table)
	}
	return nil
}

// retentionBound is how long a tombstone must be kept, and why.
type retentionBound struct {
	total time.Duration
	why   string
}

// tombstoneBound is the shortest tombstone retention that keeps "no
// resurrection" true: the longest max age of the streams SyncFlow consumes (an
// event JetStream still holds can be delivered late, redelivered or replayed),
// read from the server, plus the longest backfill cycle as a margin. A stream
// without a max age keeps every event for ever: then no retention is safe.
func tombstoneBound(ctx context.Context, st *store.Store, c common, n natsFlags) (retentionBound, error) {
	log, err := c.logger(os.Stderr)
	if err != nil {
		return retentionBound{}, err
	}
	n.cfg.Name, n.cfg.Logger = "syncflow-prune", log
	nc, err := stream.Connect(n.cfg)
	if err != nil {
		return retentionBound{}, fmt.Errorf("pruning tombstones needs the streams' max age from NATS: %w (is NATS running at the --nats-url?)", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return retentionBound{}, err
	}
	var maxAge time.Duration
	var oldest string
	for _, src := range event.Sources {
		s, err := js.Stream(ctx, src.Stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return retentionBound{}, fmt.Errorf("reading stream %s: %w", src.Stream, err)
		}
		age := s.CachedInfo().Config.MaxAge
		if age == 0 {
			return retentionBound{}, fmt.Errorf("%w: stream %s keeps its events with no age limit, so an old event of a deleted key can be replayed at any time and no tombstone may go: give the stream a max age first (streams/%s.json, then `syncflow streams apply`)",
				errUsage, src.Stream, src.Stream)
		}
		if age > maxAge {
			maxAge, oldest = age, src.Stream
		}
	}
	if oldest == "" {
		return retentionBound{}, fmt.Errorf("%w: none of the streams %s exists on this NATS server, so their max age is unknown: run `syncflow streams apply`, or point --nats-url at the production server", errUsage, streamNames())
	}
	scheds, err := st.Schedules(ctx)
	if err != nil {
		return retentionBound{}, err
	}
	var cycle int
	var cycleOf string
	for _, s := range scheds {
		if s.Days > cycle {
			cycle, cycleOf = s.Days, s.Entity
		}
	}
	b := retentionBound{total: maxAge, why: fmt.Sprintf("the max age of stream %s (%s)", oldest, days(maxAge))}
	if cycle > 0 {
		b.total += time.Duration(cycle) * 24 * time.Hour
		b.why += fmt.Sprintf(" plus the longest backfill cycle (%dd, %s)", cycle, cycleOf)
	}
	return b, nil
}

func streamNames() string {
	var names []string
	for _, src := range event.Sources {
		names = append(names, src.Stream)
	}
	return strings.Join(names, ", ")
}

// days writes a duration in days when it is a whole number of them.
func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// fileArchive appends rows to a file as JSON lines. Sync flushes its buffer and
// asks the disk to keep the data before Prune commits a deletion.
type fileArchive struct {
	name string
	file *os.File
	w    *bufio.Writer
}

func openArchive(name string) (*fileArchive, error) {
	file, err := os.OpenFile(name, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("the archive: %w (nothing was removed)", err)
	}
	return &fileArchive{name: name, file: file, w: bufio.NewWriter(file)}, nil
}

func (a *fileArchive) Add(table string, row []byte) error {
	if _, err := fmt.Fprintf(a.w, "{\"table\":%q,\"row\":%s}\n", table, row); err != nil {
		return fmt.Errorf("writing the archive %s: %w", a.name, err)
	}
	return nil
}

func (a *fileArchive) Sync() error {
	if err := a.w.Flush(); err != nil {
		return fmt.Errorf("writing the archive %s: %w", a.name, err)
	}
	if err := a.file.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		// EINVAL: a file that cannot be synced (a pipe, /dev/stdout) took the data as written.
		return fmt.Errorf("syncing the archive %s: %w", a.name, err)
	}
	return nil
}

func (a *fileArchive) Close() error {
	err := a.Sync()
	if cerr := a.file.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("closing the archive %s: %w", a.name, cerr)
	}
	return err
}
