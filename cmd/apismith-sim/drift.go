package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/syncflow/syncflow/internal/redact"
	"github.com/syncflow/syncflow/internal/sim"
)

// editMarker is what --edit-target writes into the check column: visibly not a
// value of the source.
const editMarker = "edited by hand"

// driftKind is one kind of drift in the summary: how many rows, and their keys.
type driftKind struct {
	Count int      `json:"count"`
	Keys  []string `json:"keys"`
}

// driftReport is what drift did, as --json prints it.
type driftReport struct {
	Entity        string    `json:"entity"`
	SourceCreated driftKind `json:"source_created"`
	SourceChanged driftKind `json:"source_changed"`
	SourceDeleted driftKind `json:"source_deleted"`
	TargetEdited  driftKind `json:"target_edited"`
	TargetDeleted driftKind `json:"target_deleted"`
}

func kind(keys []string) driftKind {
	if keys == nil {
		keys = []string{}
	}
	return driftKind{Count: len(keys), Keys: keys}
}

func drift(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("drift", flag.ExitOnError)
	simURL := fs.String("sim-url", "", "the simulator, started with apismith-sim serve --admin (e.g. http://127.0.0.1:8080); needed for --create, --change and --delete")
	simToken := fs.String("sim-token", os.Getenv("APISMITH_SIM_TOKEN"), "the bearer token of --sim-url ($APISMITH_SIM_TOKEN)")
	var d sim.DriftConfig
	fs.StringVar(&d.Entity, "entity", "", "the entity to drift: "+strings.Join(sim.Entities, ", "))
	fs.IntVar(&d.Create, "create", 0, "source rows to create past the end (sites and items only)")
	fs.IntVar(&d.Change, "change", 0, "live source rows to move to their next revision, with a newer rowversion")
	fs.IntVar(&d.Delete, "delete", 0, "live source rows to delete")
	fs.Uint64Var(&d.Seed, "seed", 1, "picks the source rows to change and delete")
	dbURL := fs.String("database-url", defaultDatabaseURL(), "the database with ScheduleHub's tables; needed for --edit-target and --delete-target (default $SYNCFLOW_DATABASE_URL, else the local syncflow database)")
	edit := fs.Int("edit-target", 0, "live target rows whose check column to overwrite with '"+editMarker+"'")
	del := fs.Int("delete-target", 0, "other target rows to delete")
	asJSON := fs.Bool("json", false, "print one JSON object with the counts and keys of each kind")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: apismith-sim drift --sim-url URL [--sim-token T] --entity E [--create N] [--change N] [--delete N] [--seed S]
                         [--database-url URL --edit-target N --delete-target N] [--json]

Drift changes one entity silently, without publishing any event: what a sync that
only follows events misses. Source drift goes to the rows apismith-sim serve --admin
serves; target drift goes to ScheduleHub's table schedulehub.<entity>. Target rows
are picked in key order, never rows the source drift of the same run touched.

`)
		fs.PrintDefaults()
	}
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("drift takes flags only, not %q (see apismith-sim drift --help)", fs.Arg(0))
	}
	if !sim.Known(d.Entity) {
		return fmt.Errorf("--entity must be one of %s (got %q)", strings.Join(sim.Entities, ", "), d.Entity)
	}
	if d.Create < 0 || d.Change < 0 || d.Delete < 0 || *edit < 0 || *del < 0 {
		return errors.New("the numbers of rows must not be negative")
	}
	source := d.Create+d.Change+d.Delete > 0
	target := *edit+*del > 0
	switch {
	case !source && !target:
		return errors.New("nothing to do: ask for --create, --change, --delete, --edit-target or --delete-target rows")
	case source && *simURL == "":
		return errors.New("--create, --change and --delete need --sim-url, the address of apismith-sim serve --admin")
	}
	rep := driftReport{Entity: d.Entity}
	res := sim.DriftResult{}
	if source {
		if err := adminPost(ctx, *simURL, *simToken, "/admin/drift", d, &res); err != nil {
			return fmt.Errorf("drifting the source: %w", err)
		}
	}
	rep.SourceCreated, rep.SourceChanged, rep.SourceDeleted = kind(res.Created), kind(res.Changed), kind(res.Deleted)
	if target {
		touched := map[string]bool{}
		for _, k := range slices.Concat(res.Created, res.Changed, res.Deleted) {
			touched[k] = true
		}
		edited, deleted, err := driftTarget(ctx, *dbURL, d.Entity, *edit, *del, touched)
		if err != nil {
			if source {
				return fmt.Errorf("the source drifted (%d created, %d changed, %d deleted) but the target did not: %w", len(res.Created), len(res.Changed), len(res.Deleted), err)
			}
			return err
		}
		rep.TargetEdited, rep.TargetDeleted = kind(edited), kind(deleted)
	} else {
		rep.TargetEdited, rep.TargetDeleted = kind(nil), kind(nil)
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(rep)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "KIND\tROWS (%s)\n", d.Entity)
	for _, k := range []struct {
		name string
		kind driftKind
	}{{"source-created", rep.SourceCreated}, {"source-changed", rep.SourceChanged}, {"source-deleted", rep.SourceDeleted},
		{"target-edited", rep.TargetEdited}, {"target-deleted", rep.TargetDeleted}} {
		fmt.Fprintf(tw, "%s\t%d\n", k.name, k.kind.Count)
	}
	return tw.Flush()
}

// driftTarget overwrites the check column of edit live rows of ScheduleHub's table
// for entity and deletes del other rows, in key order, skipping the rows whose
// keys ("a|b") are in skip, in one transaction. It returns the keys edited and
// deleted.
func driftTarget(ctx context.Context, dbURL, entity string, edit, del int, skip map[string]bool) (edited, deleted []string, err error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to the target database %s: %s (pass its URL with --database-url)", redact.String(dbURL), redact.String(err.Error()))
	}
	defer conn.Close(ctx)
	table := pgx.Identifier{"schedulehub", entity}.Sanitize()
	var cols []string
	for _, k := range sim.Keys(entity) {
		cols = append(cols, pgx.Identifier{strings.ToLower(k)}.Sanitize())
	}
	check := pgx.Identifier{strings.ToLower(sim.CheckField[entity])}.Sanitize()
	where := ""
	if entity == "items" {
		where = " WHERE deleted_at IS NULL" // items are deleted softly: such a row is not live
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()

	var picked [][]any
	var keys []string
	rows, err := tx.Query(ctx, "SELECT "+strings.Join(cols, ", ")+" FROM "+table+where+" ORDER BY "+strings.Join(cols, ", "))
	if err != nil {
		return nil, nil, targetErr(entity, err)
	}
	for len(picked) < edit+del && rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			rows.Close()
			return nil, nil, err
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		if key := strings.Join(parts, "|"); !skip[key] {
			picked = append(picked, vals)
			keys = append(keys, key)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, targetErr(entity, err)
	}
	if len(picked) < edit+del {
		return nil, nil, fmt.Errorf("schedulehub.%s has %d live rows the source drift did not touch: ask for at most %d with --edit-target and --delete-target together (asked %d)", entity, len(picked), len(picked), edit+del)
	}
	var match []string
	for i, c := range cols {
		match = append(match, fmt.Sprintf("%s = $%d", c, i+1))
	}
	byKey := " WHERE " + strings.Join(match, " AND ")
	for i, vals := range picked {
		sql, args := "DELETE FROM "+table+byKey, vals
		if i < edit {
			sql, args = fmt.Sprintf("UPDATE %s SET %s = $%d%s", table, check, len(cols)+1, byKey), append(append([]any{}, vals...), editMarker)
		}
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			return nil, nil, targetErr(entity, err)
		}
		if tag.RowsAffected() != 1 {
			return nil, nil, fmt.Errorf("schedulehub.%s: the row %s changed while drift ran; run drift again", entity, keys[i])
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, nil, err
	}
	return keys[:edit], keys[edit:], nil
}

// targetErr explains a missing table.
func targetErr(entity string, err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "42P01" {
		return fmt.Errorf("schedulehub.%s does not exist: apply deploy/schedulehub.sql to the target database first (%w)", entity, err)
	}
	return fmt.Errorf("schedulehub.%s: %w", entity, err)
}
