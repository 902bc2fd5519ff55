package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // registers pgx5://
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/migrations"
)

// Migrator applies the embedded bridge migrations.
type Migrator struct{ m *migrate.Migrate }

// NewMigrator opens golang-migrate on the embedded migrations and dbURL.
func NewMigrator(dbURL string) (*Migrator, error) {
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return nil, err
	}
	u, err := migrateURL(dbURL)
	if err != nil {
		return nil, err
	}
	// A connection first, for the error of a database that refuses it: the
	// driver's own attempt says less and, failing, leaves its pool open.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, notConnected(dbURL, err)
	}
	_ = conn.Close(ctx)
	m, err := migrate.NewWithSourceInstance("iofs", src, u)
	if err != nil {
		return nil, fmt.Errorf("migrate: %v", redactErr(err, dbURL))
	}
	return &Migrator{m: m}, nil
}

func migrateURL(dbURL string) (string, error) {
	if err := CheckURL(dbURL); err != nil {
		return "", err
	}
	u, err := url.Parse(dbURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("database URL must look like postgres://user@host:5432/db, got %s", RedactURL(dbURL))
	}
	u.Scheme = "pgx5"
	q := u.Query()
	if q.Get("x-migrations-table") == "" {
		q.Set("x-migrations-table", migrations.Table)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// Close releases the migrator's connection.
func (m *Migrator) Close() error {
	srcErr, dbErr := m.m.Close()
	return errors.Join(srcErr, dbErr)
}

// Up applies every pending migration; nothing to do is success.
func (m *Migrator) Up() error { return ignoreNoChange(m.m.Up()) }

// Down reverts n migrations (all of them when n <= 0).
func (m *Migrator) Down(n int) error {
	if n <= 0 {
		return ignoreNoChange(m.m.Down())
	}
	return ignoreNoChange(m.m.Steps(-n))
}

// Version returns the current version, whether it is dirty, and whether any
// migration was ever applied.
func (m *Migrator) Version() (version uint, dirty, applied bool, err error) {
	v, d, err := m.m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return 0, false, false, nil
	}
	return v, d, err == nil, err
}

// Force sets the version without running migrations (after a failed one was fixed by hand).
func (m *Migrator) Force(v int) error { return m.m.Force(v) }

// Latest returns the highest version among the embedded migrations.
func Latest() (uint, error) {
	ms, err := Migrations()
	if err != nil {
		return 0, err
	}
	return ms[len(ms)-1].Version, nil
}

// Migration is one embedded migration.
type Migration struct {
	Version uint
	Name    string // from the file name: 0001_bridge_schema -> bridge_schema
}

func (m Migration) String() string { return fmt.Sprintf("%04d %s", m.Version, m.Name) }

// Migrations returns the embedded migrations, oldest first.
func Migrations() ([]Migration, error) {
	files, err := fs.Glob(migrations.FS, "*.up.sql")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, f := range files {
		num, name, ok := strings.Cut(strings.TrimSuffix(f, ".up.sql"), "_")
		v, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %s is not named NNNN_name.up.sql", f)
		}
		out = append(out, Migration{Version: uint(v), Name: name})
	}
	if len(out) == 0 {
		return nil, errors.New("no migrations are embedded")
	}
	slices.SortFunc(out, func(a, b Migration) int { return cmp.Compare(a.Version, b.Version) })
	return out, nil
}

// TableRows is a table of the bridge schema and its rows.
type TableRows struct {
	Table string
	Rows  int64
	// Unresolved counts the unresolved dead letters (failed_records only).
	Unresolved int64
}

// BridgeContents counts the rows of every table in the bridge schema, for
// `migrate down` to say what it would drop. It returns nothing when the schema
// does not exist.
func BridgeContents(ctx context.Context, dbURL string) ([]TableRows, error) {
	if err := CheckURL(dbURL); err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, notConnected(dbURL, err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'bridge' AND c.relkind IN ('r', 'p') ORDER BY 1`)
	if err != nil {
		return nil, err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	var out []TableRows
	for _, t := range tables {
		tr := TableRows{Table: "bridge." + t}
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{"bridge", t}.Sanitize()).Scan(&tr.Rows); err != nil {
			return nil, err
		}
		if t == "failed_records" {
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM bridge.failed_records WHERE resolved_at IS NULL`).Scan(&tr.Unresolved); err != nil {
				return nil, err
			}
		}
		out = append(out, tr)
	}
	return out, nil
}

func ignoreNoChange(err error) error {
	if errors.Is(err, migrate.ErrNoChange) {
		return nil
	}
	var dirty migrate.ErrDirty
	if errors.As(err, &dirty) {
		return fmt.Errorf("the schema is dirty at version %d (a migration failed half-way): fix the cause, then run `syncflow migrate force %d` and `syncflow migrate up` again", dirty.Version, dirty.Version-1)
	}
	return err
}

// SchemaVersion reads the applied migration version straight from the database (0
// when none), for the start-up check of `syncflow run`.
func (s *Store) SchemaVersion(ctx context.Context) (uint, bool, error) {
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, migrations.Table).Scan(&exists); err != nil {
		return 0, false, err
	}
	if !exists {
		return 0, false, nil
	}
	var v int64
	var dirty bool
	err := s.pool.QueryRow(ctx, `SELECT version, dirty FROM `+quoteIdent(migrations.Table)+` LIMIT 1`).Scan(&v, &dirty)
	if err != nil {
		if strings.Contains(err.Error(), "no rows") {
			return 0, false, nil
		}
		return 0, false, err
	}
	return uint(v), dirty, nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
