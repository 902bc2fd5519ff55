// Package testenv gives tests real servers: a freshly migrated PostgreSQL database
// of their own on the local server, and an embedded JetStream server in a temp dir.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/syncflow/syncflow/deploy"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/streams"
)

// AdminURL is the server tests create their databases on:
// $SYNCFLOW_TEST_DATABASE_URL, or the local PostgreSQL with trust auth.
func AdminURL() string {
	if u := os.Getenv("SYNCFLOW_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// Database is a database of one test package.
type Database struct {
	Name string
	URL  string
}

// NewDatabase creates an empty database named after prefix; drop removes it.
func NewDatabase(ctx context.Context, prefix string) (db Database, drop func(), err error) {
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name := "syncflow_test_" + strings.ToLower(prefix) + "_" + hex.EncodeToString(suffix)
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return Database{}, nil, fmt.Errorf("test PostgreSQL at %s: %w (start it, or set SYNCFLOW_TEST_DATABASE_URL)", store.RedactURL(AdminURL()), err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return Database{}, nil, err
	}
	u, err := url.Parse(AdminURL())
	if err != nil {
		return Database{}, nil, err
	}
	u.Path = "/" + name
	db = Database{Name: name, URL: u.String()}
	drop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if admin, err := pgx.Connect(ctx, AdminURL()); err == nil {
			_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			admin.Close(ctx)
		}
	}
	return db, drop, nil
}

// NewMigratedDatabase creates a database with the bridge schema migrated up and the
// demo ScheduleHub target applied.
func NewMigratedDatabase(ctx context.Context, prefix string) (Database, func(), error) {
	db, drop, err := NewDatabase(ctx, prefix)
	if err != nil {
		return db, nil, err
	}
	if err := Migrate(ctx, db.URL); err != nil {
		drop()
		return db, nil, err
	}
	return db, drop, nil
}

// NewTargetDatabase creates a database with the demo target's tables
// (deploy/schedulehub.sql) and no bridge schema; drop removes it.
func NewTargetDatabase(ctx context.Context, prefix string) (Database, func(), error) {
	db, drop, err := NewDatabase(ctx, prefix)
	if err != nil {
		return db, nil, err
	}
	conn, err := pgx.Connect(ctx, db.URL)
	if err == nil {
		_, err = conn.Exec(ctx, deploy.ScheduleHubSQL)
		conn.Close(ctx)
	}
	if err != nil {
		drop()
		return db, nil, err
	}
	return db, drop, nil
}

// Migrate applies the bridge migrations and the demo target to dbURL.
func Migrate(ctx context.Context, dbURL string) error {
	m, err := store.NewMigrator(dbURL)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Up(); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err = conn.Exec(ctx, deploy.ScheduleHubSQL); err != nil {
		return err
	}
	// The built-in catalog, stored as `syncflow migrate up` stores it.
	st, err := store.Open(ctx, store.Config{URL: dbURL, MaxConns: 1})
	if err != nil {
		return err
	}
	defer st.Close()
	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		return err
	}
	_, _, err = st.StoreCatalog(ctx, data, "testenv", "the built-in catalog")
	return err
}

// MainDatabase is for TestMain: it creates the package's database, runs the tests
// and drops it. The URL is in *url while the tests run.
func MainDatabase(m *testing.M, prefix string, dbURL *string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	db, drop, err := NewMigratedDatabase(ctx, prefix)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer drop()
	*dbURL = db.URL
	return m.Run()
}

// template is the migrated database of the running test package that DB copies.
var template Database

// MainTemplate is for TestMain: it creates a migrated database the package's tests
// copy with DB, runs the tests, checks that they left no goroutine running, and
// drops it.
func MainTemplate(m *testing.M, prefix string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	db, drop, err := NewMigratedDatabase(ctx, prefix+"_tmpl")
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer drop()
	template = db
	return LeakCheck(m.Run())
}

// LeakCheck turns a passing run's code into a failure when goroutines outlive
// the tests (a loop never stopped, a connection never closed).
func LeakCheck(code int) int {
	if code != 0 {
		return code
	}
	if err := goleak.Find(); err != nil {
		fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
		return 1
	}
	return code
}

// DB gives t a database of its own, a copy of the package's migrated template
// (see MainTemplate), dropped when t ends: tests that each have one run in
// parallel without seeing each other's rows.
func DB(t testing.TB) string {
	t.Helper()
	if template.Name == "" {
		t.Fatal("testenv.DB needs testenv.MainTemplate in the package's TestMain")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name := template.Name + "_" + hex.EncodeToString(suffix)
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("test PostgreSQL at %s: %v (start it, or set SYNCFLOW_TEST_DATABASE_URL)", store.RedactURL(AdminURL()), err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{template.Name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if admin, err := pgx.Connect(ctx, AdminURL()); err == nil {
			_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			admin.Close(ctx)
		}
	})
	u, err := url.Parse(template.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// NATS starts an embedded JetStream server for t, storing in a temp dir; it is shut
// down when t ends.
func NATS(t testing.TB) *stream.Embedded {
	t.Helper()
	srv, err := stream.StartEmbedded("127.0.0.1", -1, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	return srv
}

// Rows runs sql and returns its rows as text, one line per row and "|" between
// columns, for comparing a table with the state a test expects.
func Rows(t testing.TB, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, "\n")
}

// NatsCLI returns the path of the nats CLI (`make tools` installs it); the test
// fails with what to do when it is missing.
func NatsCLI(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	out, _ := exec.Command("go", "env", "GOPATH").Output()
	p := filepath.Join(strings.TrimSpace(string(out)), "bin", "nats")
	if _, err := os.Stat(p); err != nil {
		t.Fatal("the nats CLI is required: run `make tools` (go install github.com/nats-io/natscli/nats@v0.5.0)")
	}
	return p
}

// Shipped returns the built-in catalog and stream definitions, as `syncflow run`
// loads them by default.
func Shipped(t testing.TB) (*catalog.Catalog, stream.Definitions) {
	t.Helper()
	data, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	defs, err := stream.LoadDefinitions(streams.FS, cat)
	if err != nil {
		t.Fatal(err)
	}
	return cat, defs
}
