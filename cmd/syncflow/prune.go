package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"time"

	"github.com/syncflow/syncflow/internal/store"
)

func pruneCmd(ctx context.Context, args []string) error {
	var (
		c       common
		age     string
		archive string
		dryRun  bool
	)
	f := newFlags("prune", "prune --older-than 90d [--archive FILE] [--dry-run]")
	c.register(f)
	f.StringVar(&age, "older-than", "", "remove what finished or was resolved longer ago than this (e.g. 90d; required)")
	f.StringVar(&archive, "archive", "", "append every removed row to this file as JSON lines ({\"table\":...,\"row\":...}) first")
	f.BoolVar(&dryRun, "dry-run", false, "count what would be removed, remove nothing")
	if err := f.parse(args); err != nil {
		return err
	}
	if age == "" || f.NArg() > 0 {
		return fmt.Errorf("%w: say how old: --older-than 90d", errUsage)
	}
	d, err := parseAge(age)
	if err != nil {
		return err
	}
	st, err := store.Open(ctx, store.Config{URL: c.databaseURL, MaxConns: 2})
	if err != nil {
		return err
	}
	defer st.Close()
	var sink func(string, []byte) error
	if archive != "" && !dryRun {
		file, err := os.OpenFile(archive, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		w := bufio.NewWriter(file)
		defer func() { _ = w.Flush(); _ = file.Close() }()
		sink = func(table string, row []byte) error {
			_, err := fmt.Fprintf(w, "{\"table\":%q,\"row\":%s}\n", table, row)
			return err
		}
	}
	res, err := st.Prune(ctx, time.Now().Add(-d), dryRun, sink)
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	fmt.Printf("%s %d resolved dead letters and %d batches older than %s\n", verb, res.DeadLetters, res.Batches, age)
	return err
}
