// Command demodb prepares a database for `make run` and `make demo`: it creates
// the database of $DATABASE_URL when it is missing (connecting to $ADMIN_URL to
// do so: by default the database postgres of the same server) and applies the
// demo ScheduleHub target (deploy/schedulehub.sql).
//
// It reads the URLs from the environment, not the command line, and prints
// errors through the redaction every SyncFlow command uses: `make run
// DATABASE_URL=...` shows no password, even for a URL that does not parse.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/syncflow/syncflow/deploy"
	"github.com/syncflow/syncflow/internal/redact"
	"github.com/syncflow/syncflow/internal/store"
)

func main() {
	fresh := flag.Bool("fresh", false, "drop the database first, if it exists")
	flag.Parse()
	dbURL, adminURL := os.Getenv("DATABASE_URL"), os.Getenv("ADMIN_URL")
	redact.AddURL(dbURL)
	redact.AddURL(adminURL)
	if err := run(dbURL, adminURL, *fresh); err != nil {
		fmt.Fprintln(os.Stderr, "demodb:", redact.String(err.Error()))
		os.Exit(1)
	}
}

func run(dbURL, adminURL string, fresh bool) error {
	if dbURL == "" {
		return errors.New("set DATABASE_URL (the database to prepare) and, if its server has no database postgres to create it from, ADMIN_URL (a database of the same server)")
	}
	if err := store.CheckURL(dbURL); err != nil {
		return err
	}
	parsed, err := url.Parse(dbURL)
	if err != nil {
		return err
	}
	name := strings.TrimPrefix(parsed.Path, "/")
	if name == "" {
		return fmt.Errorf("DATABASE_URL %s names no database", redact.String(dbURL))
	}
	if adminURL == "" {
		admin := *parsed
		admin.Path = "/postgres"
		adminURL = admin.String()
	}
	if err := store.CheckURL(adminURL); err != nil {
		return err
	}
	if a, d := server(adminURL), server(dbURL); a != d {
		return fmt.Errorf("ADMIN_URL is on %s and DATABASE_URL on %s: the database would be created on the wrong server (give an ADMIN_URL of the same server, or none)", a, d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("ADMIN_URL %s: %w", redact.String(adminURL), err)
	}
	defer admin.Close(ctx)
	ident := pgx.Identifier{name}.Sanitize()
	if fresh {
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			return err
		}
	}
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
			return err
		}
		fmt.Printf("created database %s\n", name)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL %s: %w", redact.String(dbURL), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SET client_min_messages = warning"); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, deploy.ScheduleHubSQL); err != nil {
		return fmt.Errorf("applying deploy/schedulehub.sql: %w", err)
	}
	fmt.Printf("database %s has the demo ScheduleHub tables\n", name)
	return nil
}

// server is the host and port a database URL connects to, as the driver reads
// them (the defaults and the environment included).
func server(dbURL string) string {
	cfg, err := pgconn.ParseConfig(dbURL)
	if err != nil {
		return "an unreadable URL"
	}
	return fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
}
