package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // registers pgx5://
	"github.com/golang-migrate/migrate/v4/source/iofs"

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
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return 0, err
	}
	defer src.Close()
	v, err := src.First()
	if err != nil {
		return 0, err
	}
	for {
		next, err := src.Next(v)
		if err != nil {
			return v, nil
		}
		v = next
	}
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
