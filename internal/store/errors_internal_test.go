package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/apply"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Every kind is produced here by a real server or a real driver failure where one
// can be, and by the SQLSTATE alone where it cannot (a serialization failure needs
// two sessions racing).
func TestClassify(t *testing.T) {
	ctx := context.Background()
	admin := adminURL()
	withDB := func(name string) string {
		u, err := url.Parse(admin)
		if err != nil {
			t.Fatal(err)
		}
		u.Path = "/" + name
		return u.String()
	}
	// fails runs statements on a fresh session and returns the error of the last.
	fails := func(stmts ...string) error {
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		for i, s := range stmts {
			if _, err := conn.Exec(ctx, s); err != nil {
				if i != len(stmts)-1 {
					t.Fatalf("%s: %v", s, err)
				}
				return err
			}
		}
		t.Fatalf("%v did not fail", stmts)
		return nil
	}
	closedPool := func() error {
		pool, err := pgxpool.New(ctx, admin)
		if err != nil {
			t.Fatal(err)
		}
		pool.Close()
		_, err = pool.Exec(ctx, `SELECT 1`)
		return err
	}
	terminated := func() error {
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, `SELECT pg_terminate_backend(pg_backend_pid())`)
		return err
	}
	connect := func(u string) error {
		cfg, err := pgx.ParseConfig(u)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnectTimeout = 2 * time.Second
		_, err = pgx.ConnectConfig(ctx, cfg)
		return err
	}
	long := "INSERT INTO t SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i"
	for _, tc := range []struct {
		name string
		err  error
		want error // nil: no known kind
	}{
		{"division by zero (22012)", fails(`SELECT 1/0`), apply.ErrRowRejected},
		{"check constraint (23514)", fails(`CREATE TEMP TABLE t (x int CHECK (x > 0))`, `INSERT INTO t VALUES (-1)`), apply.ErrRowRejected},
		{"index row too large (54000)", fails(`CREATE TEMP TABLE t (s text)`, `CREATE INDEX ON t (s)`, long), apply.ErrRowRejected},
		{"type mismatch (42804)", fails(`CREATE TEMP TABLE t (x int)`, `INSERT INTO t SELECT 'a'::text`), apply.ErrRowRejected},
		{"key twice in one statement (21000)", fails(`CREATE TEMP TABLE t (x int PRIMARY KEY)`, `INSERT INTO t VALUES (1), (1) ON CONFLICT (x) DO UPDATE SET x = 1`), apply.ErrRowRejected},
		{"a trigger's exception (P0001)", fails(`CREATE TEMP TABLE t (x int)`,
			`CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'x not allowed'; END $$`,
			`CREATE TRIGGER refuse BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse()`, `INSERT INTO t VALUES (1)`), apply.ErrRowRejected},
		{"read-only after a failover (25006)", fails(`SET default_transaction_read_only = on`, `CREATE TABLE ro (x int)`), apply.ErrUnavailable},
		{"statement timeout (57014)", fails(`SET statement_timeout = 10`, `SELECT pg_sleep(1)`), apply.ErrTimeout},
		{"lock timeout (55P03)", pgErr("55P03"), apply.ErrConflict},
		{"serialization failure (40001)", pgErr("40001"), apply.ErrConflict},
		{"deadlock (40P01)", pgErr("40P01"), apply.ErrConflict},
		{"too many connections (53300)", pgErr("53300"), apply.ErrUnavailable},
		{"credentials rejected (28P01)", pgErr("28P01"), apply.ErrUnavailable},
		{"idle in transaction too long (25P03)", pgErr("25P03"), apply.ErrUnavailable},
		{"connection refused", connect("postgres://postgres@127.0.0.1:1/x?sslmode=disable"), apply.ErrUnavailable},
		{"database missing at connect (3D000)", connect(withDB("syncflow_no_such_database")), apply.ErrUnavailable},
		{"session terminated (57P01)", terminated(), apply.ErrUnavailable},
		{"closed pool", closedPool(), apply.ErrUnavailable},
		{"batch deadline", fmt.Errorf("apply: %w", context.DeadlineExceeded), apply.ErrTimeout},
		{"a table dropped under us (42P01)", fails(`SELECT * FROM no_such_table`), apply.ErrTargetChanged},
		{"a column dropped under us (42703)", fails(`SELECT no_such_column FROM pg_class`), apply.ErrTargetChanged},
		{"a bug", errors.New("counts do not add up"), nil},
	} {
		got := classify(tc.err)
		if tc.want == nil {
			if apply.Kind(got) != "error" {
				t.Errorf("%s: %v classified %q, want no kind", tc.name, tc.err, apply.Kind(got))
			}
			continue
		}
		if !errors.Is(got, tc.want) {
			t.Errorf("%s: %v classified %q, want %q", tc.name, tc.err, apply.Kind(got), tc.want)
		}
		if got.Error() != tc.err.Error() {
			t.Errorf("%s: classify changed the message: %q", tc.name, got.Error())
		}
	}
	if err := classify(context.Canceled); err != context.Canceled {
		t.Errorf("a shutdown is not classified: %v", err)
	}
}

func pgErr(code string) error {
	return fmt.Errorf("statement: %w", &pgconn.PgError{Code: code, Message: "simulated"})
}

// A connection PostgreSQL refuses says what to do, keeps its kind, and never
// prints the password: the database does not exist, or the role does not.
func TestRefusedConnectionsSayWhatToDo(t *testing.T) {
	ctx := context.Background()
	admin := adminURL()
	with := func(user, db string) string {
		u, err := url.Parse(admin)
		if err != nil {
			t.Fatal(err)
		}
		u.User, u.Path = url.UserPassword(user, "s3cret-pw"), "/"+db
		return u.String()
	}
	owner, _ := url.Parse(admin)
	for _, tc := range []struct{ url, want string }{
		{with(owner.User.Username(), "syncflow_no_such_database"), "does not exist: create it (createdb, or make db) and apply the migrations (syncflow migrate up)"},
		{with("syncflow_no_such_role", "postgres"), "refuses the credentials: check the user and password of the URL"},
	} {
		_, openErr := Open(ctx, Config{URL: tc.url})
		_, migErr := NewMigrator(tc.url)
		_, leaseErr := AcquireLease(ctx, tc.url, "test", "test", 0)
		for what, err := range map[string]error{"Open": openErr, "NewMigrator": migErr, "Lease": leaseErr} {
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret-pw") {
				t.Errorf("%s(%s) = %v, want it to say %q without the password", what, RedactURL(tc.url), err, tc.want)
			}
		}
		if !errors.Is(openErr, apply.ErrUnavailable) {
			t.Errorf("Open's error lost its kind: %v", openErr)
		}
	}
}
