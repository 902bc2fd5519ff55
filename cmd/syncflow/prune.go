package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/syncflow/syncflow/internal/store"
)

func pruneCommand() command {
	return command{path: "prune", summary: "remove old batches and resolved dead letters: --older-than 90d", setup: setupPrune}
}

func setupPrune(f *flags) runFunc {
	var (
		c       common
		age     string
		archive string
		dryRun  bool
	)
	c.register(f)
	f.StringVar(&age, "older-than", "", "remove what finished or was resolved longer ago than this (e.g. 90d; required)")
	f.StringVar(&archive, "archive", "", "append every removed row to this file as JSON lines ({\"table\":...,\"row\":...}); a row is removed only once the file holds it")
	f.BoolVar(&dryRun, "dry-run", false, "count what would be removed, remove nothing")
	return func(ctx context.Context, _ []string) error {
		if age == "" {
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
		if dryRun {
			res, err := st.Prune(ctx, time.Now().Add(-d), true, nil)
			if err != nil {
				return err
			}
			to := ""
			if archive != "" {
				to = " (archiving them to " + archive + ")"
			}
			fmt.Printf("would remove %d resolved dead letters and %d batches older than %s%s\n(dry run: nothing was changed)\n", res.DeadLetters, res.Batches, age, to)
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
		res, err := st.Prune(ctx, time.Now().Add(-d), false, sinkArg)
		if sink != nil {
			if cerr := sink.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
		fmt.Printf("removed %d resolved dead letters and %d batches older than %s\n", res.DeadLetters, res.Batches, age)
		if err != nil {
			return fmt.Errorf("pruning stopped; what was removed is in the archive, the rest is still in place: %w", err)
		}
		return nil
	}
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
