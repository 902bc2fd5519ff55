package main

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/testenv"
)

// With no ADMIN_URL the database is created from the database postgres of
// DATABASE_URL's own server; an ADMIN_URL of another server is refused before
// anything is created anywhere.
func TestTheDatabaseIsCreatedOnItsOwnServer(t *testing.T) {
	admin, err := url.Parse(testenv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	db := *admin
	db.Path = "/syncflow_test_demodb"
	drop := func() {
		conn, err := pgx.Connect(context.Background(), testenv.AdminURL())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), `DROP DATABASE IF EXISTS syncflow_test_demodb WITH (FORCE)`); err != nil {
			t.Fatal(err)
		}
	}
	drop()
	t.Cleanup(drop)
	elsewhere := *admin
	elsewhere.Host = "localhost:1"
	if err := run(db.String(), elsewhere.String(), false); err == nil || !strings.Contains(err.Error(), "ADMIN_URL is on localhost:1 and DATABASE_URL on") {
		t.Errorf("an ADMIN_URL of another server: %v", err)
	}
	if err := run(db.String(), "", false); err != nil {
		t.Fatalf("no ADMIN_URL: %v", err)
	}
	conn, err := pgx.Connect(context.Background(), testenv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if got := testenv.Rows(t, conn, `SELECT count(*) FROM pg_database WHERE datname = 'syncflow_test_demodb'`); got != "1" {
		t.Errorf("the database was not created: %s", got)
	}
}
