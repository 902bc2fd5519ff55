package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/redact"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
)

// entityStatus is one entity's line of `syncflow status`.
type entityStatus struct {
	store.EntityStats
	// Lag is, per stream, the messages not yet delivered and not yet acknowledged
	// (absent when NATS was not reachable).
	Lag map[string]streamLag `json:"lag,omitempty"`
	// LastVerification is the entity's latest `syncflow verify` or verify night.
	LastVerification *lastVerification `json:"last_verification,omitempty"`
}

type lastVerification struct {
	UID        string           `json:"uid"`
	Trigger    string           `json:"trigger"`
	FinishedAt time.Time        `json:"finished_at"`
	DurationMS int64            `json:"duration_ms"`
	Counts     map[string]int64 `json:"counts"`
	Drift      int64            `json:"drift"`
	Published  int64            `json:"published"`
	Error      string           `json:"error,omitempty"`
}

// String is how the narrow table shows a last verification.
func (v *lastVerification) String() string {
	switch {
	case v == nil:
		return "-"
	case v.Error != "":
		return "failed " + ago(v.FinishedAt) + " ago"
	case v.Drift > 0:
		return fmt.Sprintf("%d drift %s ago", v.Drift, ago(v.FinishedAt))
	}
	return "ok " + ago(v.FinishedAt) + " ago"
}

type streamLag struct {
	Pending    uint64 `json:"pending"`
	AckPending uint64 `json:"ack_pending"`
	// NoConsumer says the entity has no durable consumer on the stream: its
	// events are read by nobody (run `syncflow streams apply`).
	NoConsumer bool `json:"no_consumer,omitempty"`
}

func statusCommand() command {
	return command{path: "status", summary: "per entity: checkpoint, last batch, pending, dead letters, parked, backfill", setup: setupStatus}
}

func setupStatus(f *flags) runFunc {
	var (
		c            common
		n            natsFlags
		defs         definitions
		asJSON, wide bool
	)
	c.register(f)
	n.register(f)
	defs.register(f)
	f.BoolVar(&asJSON, "json", false, "JSON for scripts, with every detail")
	f.BoolVar(&wide, "wide", false, "a wide table with every detail: the last batch's counts, pending per stream, dead letters per stage")
	return func(ctx context.Context, _ []string) error {
		if asJSON && wide {
			return fmt.Errorf("%w: --json already has every detail: drop --wide", errUsage)
		}
		return status(ctx, c, n, defs, asJSON, wide)
	}
}

func status(ctx context.Context, c common, n natsFlags, defs definitions, asJSON, wide bool) error {
	cat, err := defs.catalog(ctx, c.databaseURL)
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
	verified, err := st.LastVerifications(ctx, true)
	if err != nil {
		return fmt.Errorf("reading the verifications: %w (has `syncflow migrate up` run?)", err)
	}
	last := map[string]*lastVerification{}
	for _, v := range verified {
		lv := &lastVerification{UID: v.UID.String(), Trigger: v.Trigger, FinishedAt: v.Finished, DurationMS: v.Finished.Sub(v.Started).Milliseconds(),
			Counts: map[string]int64{}, Published: v.Published, Error: v.Error}
		for k, n := range v.Comparison.Counts {
			lv.Counts[string(k)] = n
			if k.IsDrift() {
				lv.Drift += n
			}
		}
		last[v.Entity] = lv
	}
	out := make([]entityStatus, len(stats))
	for i, s := range stats {
		out[i] = entityStatus{EntityStats: s, LastVerification: last[s.Entity]}
	}
	natsNote := redact.String(lagFromNATS(ctx, n, defs, cat, out))
	outside, err := st.CountDeadLetters(ctx, store.DeadLetterFilter{OutsideCatalog: cat.Names(), Unresolved: true})
	if err != nil {
		return err
	}
	var outsideTotal int64
	byEntity := map[string]int64{}
	for _, o := range outside {
		outsideTotal += o.Count
		byEntity[o.Entity] += o.Count
	}
	if asJSON {
		return printJSON(map[string]any{"entities": out, "dead_letters_outside_catalog": outsideTotal,
			"dead_letters_outside_catalog_by_entity": byEntity, "nats": natsNote})
	}
	if wide {
		err = statusWide(out)
	} else {
		err = statusTable(out)
	}
	if err != nil {
		return err
	}
	if outsideTotal > 0 {
		var parts []string
		for _, e := range slices.Sorted(maps.Keys(byEntity)) {
			parts = append(parts, fmt.Sprintf("%s %d", e, byEntity[e]))
		}
		fmt.Printf("\n%d unresolved dead letters on subjects no catalog entity owns (%s):\n  syncflow dlq list --outside-catalog --unresolved\n",
			outsideTotal, clip(strings.Join(parts, ", "), 40))
	}
	if natsNote != "" {
		fmt.Printf("\nPENDING unknown: %s\n", clip(natsNote, 100))
	}
	var missing []string
	for _, e := range out {
		for _, l := range e.Lag {
			if l.NoConsumer {
				missing = append(missing, e.Entity)
				break
			}
		}
	}
	if len(missing) > 0 {
		fmt.Printf("\nno durable consumer for %s: their events are read by nobody; run `syncflow streams apply`\n", strings.Join(missing, ", "))
	}
	return nil
}

// statusTable is the narrow table: one short line per entity, under 120 columns.
func statusTable(out []entityStatus) error {
	now := time.Now()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENTITY\tCHECKPOINT\tAGE\tLAST BATCH\tPENDING\tDEAD\tPARKED\tBACKFILL\tVERIFIED")
	for _, e := range out {
		checkpoint, cpAge := checkpointOf(e)
		last := "-"
		if b := e.LastBatch; b != nil {
			state := b.Status
			if state == "completed" {
				state = "ok"
			}
			last = state + " " + ago(b.StartedAt) + " ago"
		}
		pending := "-"
		if e.Lag != nil {
			var sum uint64
			missing := false
			for _, l := range e.Lag {
				sum += l.Pending + l.AckPending
				missing = missing || l.NoConsumer
			}
			pending = fmt.Sprint(sum)
			if missing {
				pending = "NO CONSUMER"
			}
		}
		var dead int64
		for _, k := range e.DeadLetters {
			dead += k
		}
		backfill := "-"
		if sc := e.Schedule; sc != nil {
			switch {
			case !sc.Enabled:
				backfill = "off"
			case sc.LastError != nil:
				backfill = "failing"
			case sc.Completed != nil && sc.TotalRows != nil:
				backfill = "done"
			case sc.TotalRows != nil && *sc.TotalRows > 0:
				backfill = fmt.Sprintf("%d%%", sc.Offset*100 / *sc.TotalRows)
			default:
				backfill = "on"
			}
			if sc.NextRun != nil && sc.Enabled && sc.LastError == nil && sc.Completed == nil {
				backfill += " next " + roundDuration(sc.NextRun.Sub(now))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", e.Entity, checkpoint, cpAge, last, pending, dead, e.Parked, backfill, e.LastVerification)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Println("\nDetails: syncflow status --wide (counts, stages, streams) or --json")
	return nil
}

func checkpointOf(e entityStatus) (string, string) {
	checkpoint, cpAge := "-", "-"
	for _, cp := range e.Checkpoints {
		if cp.RowVersion != nil {
			checkpoint = *cp.RowVersion
		}
		if cp.SyncedAt != nil {
			cpAge = ago(*cp.SyncedAt)
		}
	}
	return checkpoint, cpAge
}

func roundDuration(d time.Duration) string {
	if d < 0 {
		return "now"
	}
	if d < time.Hour {
		return fmt.Sprintf("%dm", int(d.Round(time.Minute).Minutes()))
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// statusWide is the table with every detail.
func statusWide(out []entityStatus) error {
	now := time.Now()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENTITY\tCHECKPOINT\tAGE\tLAST BATCH\tPENDING\tDEAD LETTERS\tPARKED\tBACKFILL\tVERIFIED")
	for _, e := range out {
		checkpoint, cpAge := checkpointOf(e)
		last := "-"
		if b := e.LastBatch; b != nil {
			last = fmt.Sprintf("%s %s %s ago: %d in, %d ins, %d upd, %d unch, %d stale, %d del, %d parked, %d released, %d failed",
				b.SyncType, b.Status, ago(b.StartedAt), b.Fetched, b.Inserted, b.Updated, b.Unchanged, b.Stale, b.Deleted, b.Parked, b.Released, b.Failed)
		}
		pending := "-"
		if e.Lag != nil {
			var parts []string
			for _, src := range event.Sources {
				if l, ok := e.Lag[src.Stream]; ok && l.NoConsumer {
					parts = append(parts, src.Name+" no consumer")
				} else if ok {
					parts = append(parts, fmt.Sprintf("%s %d", src.Name, l.Pending+l.AckPending))
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
				backfill += " next " + roundDuration(sc.NextRun.Sub(now))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Entity, checkpoint, cpAge, last, pending, dead, parked, backfill, e.LastVerification)
	}
	return tw.Flush()
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
		for _, src := range event.Sources {
			s := src.Stream
			cons, err := js.Consumer(ctx, s, sdefs.Consumers[s][e].Durable)
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				out[i].Lag[s] = streamLag{NoConsumer: true}
				continue
			}
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
