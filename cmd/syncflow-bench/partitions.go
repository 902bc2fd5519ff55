package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/testenv"
)

// partitionScale loads a year of history, rows batches and as many dead
// letters spread over twelve months, then prunes the oldest month row by row
// (the baseline: how prune worked before the tables were partitioned) and the
// next month whole (DropMonths: a detach and a drop). It prints the time per row
// of each, and whether the hot statements still read their indexes at that size.
func partitionScale(rows int) error {
	ctx := context.Background()
	db, drop, err := testenv.NewMigratedDatabase(ctx, "partitions")
	if err != nil {
		return err
	}
	defer drop()
	pool, err := pgxpool.New(ctx, db.URL)
	if err != nil {
		return err
	}
	defer pool.Close()
	exec := func(sql string) error {
		_, err := pool.Exec(ctx, sql)
		if err != nil {
			return fmt.Errorf("%.80s: %w", sql, err)
		}
		return nil
	}
	// Month 0 is 13 months back; the history runs from it to now.
	start := time.Now()
	if err := exec(`SELECT bridge.ensure_month_partitions(t, now() - interval '13 months', 16) FROM unnest('{sync_batches,failed_records}'::text[]) t`); err != nil {
		return err
	}
	step := fmt.Sprintf("%f", (365.0*24*3600)/float64(rows)) // seconds between rows: a year in all
	v7 := func(t string) string {
		return `(left(bridge.uuid_floor(` + t + `)::text, 13) || '-7' || substr(gen_random_uuid()::text, 16))::uuid`
	}
	at := `now() - interval '13 months' + i * interval '` + step + ` seconds'`
	if err := exec(`INSERT INTO bridge.sync_batches (uid, entity_name, sync_type, status, replica, started_at, finished_at, rows_fetched, rows_inserted)
		SELECT ` + v7(at) + `, (ARRAY['sites','work_centers','items','work_orders','work_order_operations'])[1 + i % 5],
		       'realtime', 'completed', 'r' || (i % 3), ` + at + `, ` + at + `, 500, 500
		FROM generate_series(1, ` + fmt.Sprint(rows) + `) i`); err != nil {
		return err
	}
	if err := exec(`INSERT INTO bridge.failed_records (uid, entity_name, stream, stream_seq, raw_bytes, raw_data, stage_failed, error_message, resolved_at, created_at)
		SELECT ` + v7(at) + `, (ARRAY['sites','work_orders'])[1 + i % 2], 'APISMITH_CDC', i, '\x7b7d', ('{"data":{"PART_NO":"P' || i || '"}}')::jsonb,
		       'mapping', 'column "x" is not mapped', ` + at + ` + interval '1 hour', ` + at + `
		FROM generate_series(1, ` + fmt.Sprint(rows) + `) i`); err != nil {
		return err
	}
	if err := exec(`VACUUM ANALYZE`); err != nil {
		return err
	}
	fmt.Printf("partitions: loaded %d batches and %d dead letters over a year in %s\n", rows, rows, time.Since(start).Round(time.Second))

	st, err := store.Open(ctx, store.Config{URL: db.URL, MaxConns: 2})
	if err != nil {
		return err
	}
	defer st.Close()
	// The baseline: the oldest (partial) month removed row by row, as prune did
	// before the tables were partitioned (chunks of a thousand rows).
	first := time.Now().AddDate(0, -13, 0)
	first = time.Date(first.Year(), first.Month(), 1, 0, 0, 0, 0, time.UTC)
	began := time.Now()
	res, err := st.Prune(ctx, first.AddDate(0, 1, 1), false, nil)
	if err != nil {
		return err
	}
	rowTook := time.Since(began)
	rowRows := res.Batches + res.DeadLetters
	// Then the next month, whole: the emptied first month and the second go.
	began = time.Now()
	months, err := st.DropMonths(ctx, first.AddDate(0, 2, 1), false, nil, 5*time.Second)
	if err != nil {
		return err
	}
	dropTook := time.Since(began)
	var dropped []string
	var dropRows int64
	for _, m := range months {
		if m.Kept != "" {
			return fmt.Errorf("kept %s %s: %s", m.Table, m.Start.Format("2006-01"), m.Kept)
		}
		dropRows += m.Rows
		dropped = append(dropped, fmt.Sprintf("%s %s (%d rows)", m.Table, m.Start.Format("2006-01"), m.Rows))
	}
	perRow := func(d time.Duration, n int64) float64 { return float64(d.Microseconds()) / float64(max(n, 1)) }
	fmt.Printf("partitions: row by row (the baseline), prune removed %d rows of %s in %s: %.1f µs a row\n",
		rowRows, first.Format("2006-01"), rowTook.Round(time.Millisecond), perRow(rowTook, rowRows))
	fmt.Printf("partitions: by the month, prune dropped %s in %s (its checks, and a count of each month): %.2f µs a row, %.0fx faster a row\n",
		strings.Join(dropped, ", "), dropTook.Round(time.Millisecond), perRow(dropTook, dropRows), perRow(rowTook, rowRows)/perRow(dropTook, dropRows))

	// The hot statements at this size.
	for _, q := range []struct{ name, sql string }{
		{"due dead letters", `EXPLAIN SELECT uid FROM bridge.failed_records WHERE resolved_at IS NULL AND next_retry_at <= now() ORDER BY next_retry_at LIMIT 500`},
		{"newest batch of an entity", `EXPLAIN SELECT * FROM bridge.sync_batches WHERE entity_name = 'items' ORDER BY started_at DESC LIMIT 1`},
		{"unresolved dead letters by entity", `EXPLAIN SELECT entity_name, stage_failed, count(*) FROM bridge.failed_records WHERE resolved_at IS NULL GROUP BY 1, 2`},
	} {
		r, err := pool.Query(ctx, q.sql)
		if err != nil {
			return err
		}
		var plan []string
		for r.Next() {
			var line string
			if err := r.Scan(&line); err != nil {
				r.Close()
				return err
			}
			plan = append(plan, line)
		}
		r.Close()
		whole := strings.Join(plan, "\n")
		verdict := "reads its indexes"
		if seqScanned(whole) {
			verdict = "SCANS A TABLE:\n" + whole
		}
		fmt.Printf("partitions: %s: %s\n", q.name, verdict)
	}
	return nil
}

// seqScanned says whether a plan reads a non-empty bridge table sequentially.
func seqScanned(plan string) bool {
	for _, line := range strings.Split(plan, "\n") {
		if strings.Contains(line, "Seq Scan on") && !strings.Contains(line, "cost=0.00..0.00") {
			return true
		}
	}
	return false
}
