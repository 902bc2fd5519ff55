package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/streams"
)

// entityStatus is one entity's line of `syncflow status`.
type entityStatus struct {
	store.EntityStats
	// Lag is, per stream, the messages not yet delivered and not yet acknowledged
	// (absent when NATS was not reachable).
	Lag map[string]streamLag `json:"lag,omitempty"`
}

type streamLag struct {
	Pending    uint64 `json:"pending"`
	AckPending uint64 `json:"ack_pending"`
}

func statusCmd(ctx context.Context, args []string) error {
	var (
		c      common
		n      natsFlags
		defs   definitions
		asJSON bool
	)
	f := newFlags("status", "status [--json]")
	c.register(f)
	n.register(f)
	defs.register(f)
	f.BoolVar(&asJSON, "json", false, "JSON for scripts")
	if err := f.parse(args); err != nil {
		return err
	}
	cat, err := defs.catalog()
	if err != nil {
		return err
	}
	st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
	if err != nil {
		return err
	}
	defer st.Close()
	stats, err := st.Stats(ctx, cat.Names())
	if err != nil {
		return fmt.Errorf("reading the bridge tables: %w (has `syncflow migrate up` run?)", err)
	}
	out := make([]entityStatus, len(stats))
	for i, s := range stats {
		out[i] = entityStatus{EntityStats: s}
	}
	natsNote := lagFromNATS(ctx, n, defs, cat, out)
	outside, err := st.DeadLettersOutside(ctx, cat.Names())
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(map[string]any{"entities": out, "dead_letters_outside_catalog": outside, "nats": natsNote})
	}
	now := time.Now()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENTITY\tCHECKPOINT\tAGE\tLAST BATCH\tPENDING\tDEAD LETTERS\tPARKED\tBACKFILL")
	for _, e := range out {
		checkpoint, cpAge := "-", "-"
		for _, cp := range e.Checkpoints {
			if cp.RowVersion != nil {
				checkpoint = *cp.RowVersion
			}
			if cp.SyncedAt != nil {
				cpAge = ago(*cp.SyncedAt)
			}
		}
		last := "-"
		if b := e.LastBatch; b != nil {
			last = fmt.Sprintf("%s %s %s ago: %d in, %d ins, %d upd, %d unch, %d stale, %d del, %d parked, %d failed",
				b.SyncType, b.Status, ago(b.StartedAt), b.Fetched, b.Inserted, b.Updated, b.Unchanged, b.Stale, b.Deleted, b.Parked, b.Failed)
		}
		pending := "-"
		if e.Lag != nil {
			var parts []string
			for _, s := range []string{streams.Realtime, streams.Backfill} {
				if l, ok := e.Lag[s]; ok {
					parts = append(parts, fmt.Sprintf("%s %d", strings.TrimPrefix(strings.ToLower(s), "apismith_"), l.Pending+l.AckPending))
				}
			}
			pending = strings.Join(parts, ", ")
		}
		dead := "0"
		if len(e.DeadLetters) > 0 {
			var parts []string
			total := int64(0)
			for stage, k := range e.DeadLetters {
				parts = append(parts, fmt.Sprintf("%s %d", stage, k))
				total += k
			}
			sort.Strings(parts)
			dead = fmt.Sprintf("%d (%s; oldest %s)", total, strings.Join(parts, ", "), ago(*e.OldestDeadLetter))
		}
		parked := "0"
		if e.Parked > 0 {
			parked = fmt.Sprintf("%d (oldest %s)", e.Parked, ago(*e.OldestParked))
		}
		backfill := "-"
		if sc := e.Schedule; sc != nil {
			state := "disabled"
			if sc.Enabled {
				state = "enabled"
			}
			progress := fmt.Sprint(sc.Offset)
			if sc.TotalRows != nil {
				progress = fmt.Sprintf("%d/%d", sc.Offset, *sc.TotalRows)
			}
			backfill = state + " " + progress
			switch {
			case sc.LastError != nil:
				backfill += " (last run failed)"
			case sc.Completed != nil && sc.TotalRows != nil:
				backfill += " (complete)"
			case sc.NextRun != nil:
				backfill += " next " + sc.NextRun.Sub(now).Round(time.Minute).String()
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Entity, checkpoint, cpAge, last, pending, dead, parked, backfill)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if outside > 0 {
		fmt.Printf("\n%d unresolved dead letters on subjects no catalog entity owns (syncflow dlq list --entity unknown)\n", outside)
	}
	if natsNote != "" {
		fmt.Printf("\nPENDING unknown: %s\n", natsNote)
	}
	return nil
}

// lagFromNATS fills in the consumers' pending counts; it returns why it could not.
func lagFromNATS(ctx context.Context, n natsFlags, defs definitions, cat *catalog.Catalog, out []entityStatus) string {
	sdefs, err := defs.streams(cat)
	if err != nil {
		return err.Error()
	}
	n.cfg.Name = "syncflow-status"
	nc, err := stream.Connect(n.cfg)
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err.Error()
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for i, e := range cat.Names() {
		out[i].Lag = map[string]streamLag{}
		for _, s := range []string{streams.Realtime, streams.Backfill} {
			cons, err := js.Consumer(ctx, s, sdefs.Consumers[s][e].Durable)
			if err != nil {
				continue
			}
			info, err := cons.Info(ctx)
			if err != nil {
				continue
			}
			out[i].Lag[s] = streamLag{Pending: info.NumPending, AckPending: uint64(info.NumAckPending)}
		}
	}
	return ""
}
