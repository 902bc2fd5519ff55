package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// bridge.catalog_versions: the entity catalog, one row per version applied.

// CatalogVersion is one stored version of the catalog.
type CatalogVersion struct {
	Version   int       `json:"version"`
	Document  []byte    `json:"-"`
	SHA256    string    `json:"sha256"`
	AppliedBy string    `json:"applied_by"`
	Note      *string   `json:"note"`
	CreatedAt time.Time `json:"created_at"`
}

// CatalogChannel is the NOTIFY channel a new catalog version, or a refresh,
// signals.
const CatalogChannel = "bridge_catalog"

// ErrNoCatalog says no catalog has been stored yet.
var ErrNoCatalog = errors.New("no catalog is stored")

// ErrNotMigrated says the database lacks the table a newer migration adds.
var ErrNotMigrated = errors.New("the bridge schema is missing or older than this release: run `syncflow migrate up` (or `syncflow run --migrate`)")

const catalogColumns = `version, document, document_sha256, applied_by, note, created_at`

func scanCatalogVersion(row pgx.CollectableRow) (CatalogVersion, error) {
	var v CatalogVersion
	var doc string
	err := row.Scan(&v.Version, &doc, &v.SHA256, &v.AppliedBy, &v.Note, &v.CreatedAt)
	v.Document = []byte(doc)
	return v, err
}

const latestCatalogSQL = `SELECT ` + catalogColumns + ` FROM bridge.catalog_versions ORDER BY version DESC LIMIT 1`

// LatestCatalog returns the newest stored version; ErrNoCatalog when there is
// none.
func (s *Store) LatestCatalog(ctx context.Context) (CatalogVersion, error) {
	return s.catalogVersion(ctx, latestCatalogSQL)
}

// Catalog returns one stored version; ErrNotFound when there is no such version.
func (s *Store) Catalog(ctx context.Context, version int) (CatalogVersion, error) {
	v, err := s.catalogVersion(ctx, `SELECT `+catalogColumns+` FROM bridge.catalog_versions WHERE version = $1`, version)
	if errors.Is(err, ErrNoCatalog) {
		return v, ErrNotFound
	}
	return v, err
}

func (s *Store) catalogVersion(ctx context.Context, sql string, args ...any) (CatalogVersion, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return CatalogVersion{}, notMigrated(err)
	}
	v, err := pgx.CollectExactlyOneRow(rows, scanCatalogVersion)
	if errors.Is(err, pgx.ErrNoRows) {
		return CatalogVersion{}, ErrNoCatalog
	}
	return v, notMigrated(err)
}

// notMigrated turns "relation does not exist" into ErrNotMigrated.
func notMigrated(err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) && (pg.Code == "42P01" || pg.Code == "3F000") {
		return ErrNotMigrated
	}
	return classify(err)
}

// CatalogHistory returns every stored version, newest first, without documents.
func (s *Store) CatalogHistory(ctx context.Context) ([]CatalogVersion, error) {
	rows, err := s.pool.Query(ctx, `SELECT version, '', document_sha256, applied_by, note, created_at FROM bridge.catalog_versions ORDER BY version DESC`)
	if err != nil {
		return nil, notMigrated(err)
	}
	return pgx.CollectRows(rows, scanCatalogVersion)
}

// storeCatalogSQL adds a version after the newest, unless the newest holds the
// same document. The table lock makes two concurrent applies take turns: the
// second sees the first's version (and stores nothing when it is the same).
const storeCatalogSQL = `
WITH latest AS (SELECT version, document_sha256 FROM bridge.catalog_versions ORDER BY version DESC LIMIT 1)
INSERT INTO bridge.catalog_versions (uid, version, document, document_sha256, applied_by, note)
SELECT $1, coalesce((SELECT version FROM latest), 0) + 1, $2, $3, $4, $5
WHERE (SELECT document_sha256 FROM latest) IS DISTINCT FROM $3
RETURNING version`

// StoreCatalog stores doc as the newest version (running services pick it up at
// once). A document equal to the newest stores nothing: it returns that
// version and false.
func (s *Store) StoreCatalog(ctx context.Context, doc []byte, appliedBy, note string) (version int, stored bool, err error) {
	sum := sha256.Sum256(doc)
	hash := hex.EncodeToString(sum[:])
	var n *string
	if note != "" {
		n = &note
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `LOCK TABLE bridge.catalog_versions IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, storeCatalogSQL, s.NewUID(), string(doc), hash, appliedBy, n).Scan(&version)
		if errors.Is(err, pgx.ErrNoRows) {
			return tx.QueryRow(ctx, `SELECT max(version) FROM bridge.catalog_versions`).Scan(&version)
		}
		stored = err == nil
		return err
	})
	return version, stored, classify(err)
}

// StoreCatalogIfNone stores doc as version 1 when no catalog is stored; it
// returns the newest version and whether it stored doc.
func (s *Store) StoreCatalogIfNone(ctx context.Context, doc []byte, appliedBy, note string) (int, bool, error) {
	v, err := s.LatestCatalog(ctx)
	switch {
	case err == nil:
		return v.Version, false, nil
	case !errors.Is(err, ErrNoCatalog):
		return 0, false, err
	}
	// Two processes starting on a new database at once: the second finds the
	// first's version under the table lock, and stores nothing when it is doc.
	return s.StoreCatalog(ctx, doc, appliedBy, note)
}

// RefreshCatalog asks every running service to re-read the catalog and its
// target tables' columns, with no new version.
func (s *Store) RefreshCatalog(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `SELECT pg_notify($1, 'refresh')`, CatalogChannel)
	return classify(err)
}

// WatchCatalog calls onChange whenever a catalog version is stored or a refresh
// is asked for (LISTEN/NOTIFY), and every resync interval as a safety net for a
// missed notification. It returns when ctx ends; connection losses are retried.
func (s *Store) WatchCatalog(ctx context.Context, resync time.Duration, log *slog.Logger, onChange func()) error {
	return s.watch(ctx, CatalogChannel, "catalog", resync, log, onChange)
}
