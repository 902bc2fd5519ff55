package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// target is what the store knows about one ScheduleHub table: its columns (mapped
// fields that are not columns are not written) and the SQL built for it.
type target struct {
	entity  *catalog.Entity
	ident   string // sanitized "schema"."table"
	columns map[string]bool
	key     []string

	mu      sync.Mutex
	upserts map[string]string // by kind and sorted column list, at most maxCachedUpserts
}

// maxCachedUpserts bounds the upsert statements kept per target: events choose
// which columns they carry, and a publisher sending every subset of a wide table
// must not grow the cache without end. Past the bound, a statement is built for
// each use.
const maxCachedUpserts = 64

type targets struct {
	mu sync.RWMutex
	m  map[string]*target
}

func newTargets() *targets { return &targets{m: map[string]*target{}} }

const columnsSQL = `
SELECT a.attname
FROM pg_attribute a
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped`

// uniqueKeySQL finds a unique index or constraint whose columns are exactly $2, as
// ON CONFLICT needs one.
const uniqueKeySQL = `
SELECT EXISTS (
    SELECT 1 FROM pg_index i
    WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indpred IS NULL
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
           FROM pg_attribute a
           WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = $2::text[]
      AND cardinality(i.indkey::int2[]) = cardinality($2::text[]))`

// PrepareTargets checks every catalog entity's target table: it must exist, have the
// key columns with a unique index on exactly them, and the soft-delete column when the
// entity uses one. The error names the entity and what to fix. The targets are put
// in use all at once, and only when every one of them is fine: a catalog that does
// not fit leaves the targets in use as they were.
func (s *Store) PrepareTargets(ctx context.Context, cat *catalog.Catalog) error {
	var errs []string
	loaded := map[string]*target{}
	for _, e := range cat.Entities() {
		t, err := s.loadTarget(ctx, e)
		if err != nil {
			errs = append(errs, fmt.Sprintf("entity %q: %v", e.Name, err))
			continue
		}
		loaded[e.Name] = t
	}
	if len(errs) > 0 {
		return fmt.Errorf("target tables: %s", strings.Join(errs, "; "))
	}
	s.targets.mu.Lock()
	maps.Copy(s.targets.m, loaded)
	s.targets.mu.Unlock()
	return nil
}

func (s *Store) loadTarget(ctx context.Context, e *catalog.Entity) (*target, error) {
	name := e.Target.QualifiedName()
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{e.Target.Schema, e.Target.Table}.Sanitize()).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		return nil, fmt.Errorf("target table %s does not exist (create it, as deploy/schedulehub.sql does the demo's, or apply a catalog without the entity)", name)
	}
	ident := pgx.Identifier{e.Target.Schema, e.Target.Table}.Sanitize()
	rows, err := s.pool.Query(ctx, columnsSQL, ident)
	if err != nil {
		return nil, err
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	t := &target{entity: e, ident: ident, columns: map[string]bool{}, key: e.Target.Key, upserts: map[string]string{}}
	for _, c := range cols {
		t.columns[c] = true
	}
	if t.columns[bkField] {
		return nil, fmt.Errorf("target table %s has a column named %s, which SyncFlow reserves (rename it)", name, bkField)
	}
	for _, k := range e.Target.Key {
		if !t.columns[k] {
			return nil, fmt.Errorf("target table %s has no key column %s", name, k)
		}
	}
	if e.Delete == catalog.DeleteSoft && !t.columns[e.SoftDeleteColumn] {
		return nil, fmt.Errorf("target table %s has no soft-delete column %s", name, e.SoftDeleteColumn)
	}
	sorted := slices.Sorted(slices.Values(e.Target.Key))
	var unique bool
	if err := s.pool.QueryRow(ctx, uniqueKeySQL, ident, sorted).Scan(&unique); err != nil {
		return nil, err
	}
	if !unique {
		return nil, fmt.Errorf("target table %s needs a unique index or primary key on exactly (%s)", name, strings.Join(e.Target.Key, ", "))
	}
	return t, nil
}

func (s *Store) target(entity string) (*target, error) {
	s.targets.mu.RLock()
	defer s.targets.mu.RUnlock()
	t, ok := s.targets.m[entity]
	if !ok {
		return nil, fmt.Errorf("store: target of entity %q was not prepared", entity)
	}
	return t, nil
}

// keyOf is the row's key, as text.
func (t *target) keyOf(row map[string]any) string {
	var b strings.Builder
	for _, k := range t.key {
		fmt.Fprint(&b, row[k], "\x1f")
	}
	return b.String()
}

// writable returns the row's fields that are columns of the target, sorted.
func (t *target) writable(row map[string]any) []string {
	cols := make([]string, 0, len(row))
	for c := range row {
		if t.columns[c] {
			cols = append(cols, c)
		}
	}
	slices.Sort(cols)
	return cols
}

// upsertSQL returns the multi-row upsert for one set of columns. Rows travel as one
// JSON array; jsonb_populate_recordset converts each value to its column's type, so
// a value the column cannot take fails the statement with a class 22 error. The
// ledger row of each row written learns the row's key and hash as stored (after
// the table's defaults and triggers), matched by key through the bk_hash each row
// carries beside its columns.
func (t *target) upsertSQL(cols []string) string {
	return t.cached("target "+strings.Join(cols, ","), func() string {
		list := quotedList(cols)
		return "WITH w AS (INSERT INTO " + t.ident + " AS t (" + list + ") SELECT " + list +
			" FROM jsonb_populate_recordset(NULL::" + t.ident + ", $1::jsonb) " + t.onConflict(cols) +
			" RETURNING " + t.keyExpr("t") + " AS k, " + t.hashExpr("t") + " AS h)" +
			", m AS (SELECT " + t.keyExpr("p") + " AS k, e.value->>'" + bkField + "' AS bk" +
			" FROM jsonb_array_elements($1::jsonb) AS e, jsonb_populate_record(NULL::" + t.ident + ", e.value) AS p)" +
			" UPDATE bridge.synced_records AS r SET target_hash = w.h, target_key = w.k FROM w JOIN m USING (k)" +
			" WHERE r.entity_name = $2 AND r.bk_hash = m.bk"
	})
}

// upsertLedgerSQL returns the multi-row upsert of one set of columns together
// with the ledger rows of its rows: the target rows first (as upsertSQL), then
// the ledger rows in key order, each with its target row's key and hash as
// stored, where it supersedes the row there (as WriteLedger). The rows travel as
// one JSON array ($1) beside the ledger's columns as arrays ($4-$10) in the same
// order. A target row the table did not return (its trigger changed the key or
// skipped the row) leaves the ledger row's hash as it was, as upsertSQL does.
func (t *target) upsertLedgerSQL(cols []string) string {
	return t.cached("ledger "+strings.Join(cols, ","), func() string {
		fields := make([]string, len(cols))
		for i, c := range cols {
			fields[i] = "(p.r)." + pgx.Identifier{c}.Sanitize()
		}
		return `WITH p AS MATERIALIZED (
    SELECT u.bk_hash, u.business_key, u.rowversion, u.ord, u.src, u.seq, u.hash,
           jsonb_populate_record(NULL::` + t.ident + `, u.obj) AS r
    FROM ROWS FROM (jsonb_array_elements($1::jsonb), unnest($4::text[]), unnest($5::text[]), unnest($6::text[]),
                    unnest($7::bigint[]), unnest($8::text[]), unnest($9::bigint[]), unnest($10::bytea[]))
        AS u (obj, bk_hash, business_key, rowversion, ord, src, seq, hash)),
w AS (INSERT INTO ` + t.ident + ` AS t (` + quotedList(cols) + `) SELECT ` + strings.Join(fields, ", ") + ` FROM p ORDER BY p.bk_hash
    ` + t.onConflict(cols) + `
    RETURNING ` + t.keyExpr("t") + ` AS k, ` + t.hashExpr("t") + ` AS h)
INSERT INTO bridge.synced_records AS r
    (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream,
     stream_seq, payload_hash, deleted, batch_uid, target_hash, target_key)
SELECT $2, p.bk_hash, p.business_key::jsonb, p.rowversion, p.ord, p.src, p.seq, p.hash, false, $3, w.h, w.k
FROM p LEFT JOIN w ON w.k = ` + t.keyExpr("(p.r)") + `
ORDER BY p.bk_hash
` + ledgerUpdate + `,
    target_hash = coalesce(excluded.target_hash, r.target_hash), target_key = coalesce(excluded.target_key, r.target_key)
WHERE ` + supersedesSQL("r") + `
RETURNING bk_hash`
	})
}

// cached returns the statement cached under sig, building it on first use.
func (t *target) cached(sig string, build func() string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if q, ok := t.upserts[sig]; ok {
		return q
	}
	q := build()
	if len(t.upserts) < maxCachedUpserts {
		t.upserts[sig] = q
	}
	return q
}

// onConflict is the ON CONFLICT clause of an upsert of cols: the columns carried
// are updated; for a soft delete, the mark is cleared unless carried; for a
// replace, every other column goes back to its default (NULL without one), as on
// an insert, for the event is the whole row.
func (t *target) onConflict(cols []string) string {
	var set []string
	for _, c := range cols {
		if !slices.Contains(t.key, c) {
			q := pgx.Identifier{c}.Sanitize()
			set = append(set, q+" = excluded."+q)
		}
	}
	soft := t.entity.Delete == catalog.DeleteSoft
	if soft && !slices.Contains(cols, t.entity.SoftDeleteColumn) {
		set = append(set, pgx.Identifier{t.entity.SoftDeleteColumn}.Sanitize()+" = NULL")
	}
	if t.entity.Upsert == catalog.UpsertReplace {
		for _, c := range slices.Sorted(maps.Keys(t.columns)) {
			if !slices.Contains(cols, c) && !slices.Contains(t.key, c) && !(soft && c == t.entity.SoftDeleteColumn) {
				set = append(set, pgx.Identifier{c}.Sanitize()+" = DEFAULT")
			}
		}
	}
	if len(set) == 0 {
		return "ON CONFLICT (" + quotedList(t.key) + ") DO NOTHING"
	}
	return "ON CONFLICT (" + quotedList(t.key) + ") DO UPDATE SET " + strings.Join(set, ", ")
}

// quotedList is cols quoted, separated by commas.
func quotedList(cols []string) string {
	quoted := make([]string, len(cols))
	for i, c := range cols {
		quoted[i] = pgx.Identifier{c}.Sanitize()
	}
	return strings.Join(quoted, ", ")
}

// bkField carries each upserted row's bk_hash beside its columns (the upsert
// ignores it: no target may have a column of that name).
const bkField = "$syncflow_bk_hash"

// keyExpr is the key of the row aliased alias, as text: the row of its key
// columns (bridge.synced_records.target_key), e.g. (WO-1,10).
func (t *target) keyExpr(alias string) string {
	cols := make([]string, len(t.key))
	for i, k := range t.key {
		cols[i] = alias + "." + pgx.Identifier{k}.Sanitize()
	}
	return "ROW(" + strings.Join(cols, ", ") + ")::text"
}

// hashExpr is the verification hash of the row aliased alias: a 64-bit hash
// (hashtextextended) of the row's text with its trailing null columns cut, so
// that a column added to the table (appended, null) does not change it: "(a,b,)"
// and "(a,b)" are both cut to "(a,b" (a value that ends in "," or ")" is quoted
// in a row's text, so no value loses a character). alias.* is the whole row even
// when a column is named alias. The text of a row depends on the session's output
// settings, which the store pins (Open: TimeZone, DateStyle, IntervalStyle,
// extra_float_digits, bytea_output, lc_monetary). The ledger keeps the hash as the
// row is written (bridge.synced_records.target_hash); verify recomputes it over
// the target. It detects changes, and is no defence against someone who can write
// the target and means to hide an edit.
func (t *target) hashExpr(alias string) string {
	return "int8send(hashtextextended(rtrim((" + alias + ".*)::text, ',)'), 0))"
}

// deleteSQL removes (or, for soft delete, marks) the rows whose keys are in $1.
func (t *target) deleteSQL() string {
	conds := make([]string, len(t.key))
	for i, k := range t.key {
		q := pgx.Identifier{k}.Sanitize()
		conds[i] = "t." + q + " = d." + q
	}
	from := " jsonb_populate_recordset(NULL::" + t.ident + ", $1::jsonb) AS d WHERE " + strings.Join(conds, " AND ")
	if t.entity.Delete == catalog.DeleteSoft {
		sd := pgx.Identifier{t.entity.SoftDeleteColumn}.Sanitize()
		return "UPDATE " + t.ident + " AS t SET " + sd + " = now() FROM" + from + " AND t." + sd + " IS NULL"
	}
	return "DELETE FROM " + t.ident + " AS t USING" + from
}

// WriteTarget upserts and deletes rows of entity's target table: one statement per
// set of columns the rows carry (the rows travel as one JSON array), rows in key
// order, and one for the deletes.
func (t *tx) WriteTarget(ctx context.Context, entity string, upserts []apply.TargetRow, deletes []map[string]any) error {
	tg, err := t.s.target(entity)
	if err != nil {
		return err
	}
	groups, err := t.bySignature(tg, upserts)
	if err != nil {
		return err
	}
	for _, g := range groups {
		if _, err := t.exec(ctx, tg.upsertSQL(g.cols), g.body, entity); err != nil {
			t.s.reloadTargetAfter(ctx, tg, err)
			return classify(err)
		}
	}
	if len(deletes) > 0 {
		body, err := json.Marshal(deletes)
		if err != nil {
			return err
		}
		if _, err := t.exec(ctx, tg.deleteSQL(), body); err != nil {
			t.s.reloadTargetAfter(ctx, tg, err)
			return classify(err)
		}
	}
	return nil
}

// WriteUpserts upserts rows of entity's target table and writes their ledger
// rows, in one statement per set of columns the rows carry (upsertLedgerSQL),
// rows in key order. It returns the key hashes whose ledger rows it wrote.
func (t *tx) WriteUpserts(ctx context.Context, entity string, batch uuid.UUID, rows []apply.UpsertRow) (map[string]bool, error) {
	tg, err := t.s.target(entity)
	if err != nil {
		return nil, err
	}
	rows = slices.Clone(rows)
	slices.SortFunc(rows, func(a, b apply.UpsertRow) int { return strings.Compare(a.Record.BKHash, b.Record.BKHash) })
	targets := make([]apply.TargetRow, len(rows))
	for i, r := range rows {
		targets[i] = apply.TargetRow{BKHash: r.Record.BKHash, Row: r.Row}
	}
	groups, err := t.bySignature(tg, targets)
	if err != nil {
		return nil, err
	}
	written := make(map[string]bool, len(rows))
	for _, g := range groups {
		ledger := make([]apply.LedgerRow, len(g.rows))
		for j, i := range g.rows {
			ledger[j] = rows[i].LedgerRow
		}
		a := ledgerArraysOf(ledger)
		q, err := t.query(ctx, tg.upsertLedgerSQL(g.cols), g.body, entity, batch, a.hashes, a.keys, a.versions, a.ords, a.srcs, a.seqs, a.payloads)
		if err != nil {
			t.s.reloadTargetAfter(ctx, tg, err)
			return nil, classify(err)
		}
		won, err := pgx.CollectRows(q, pgx.RowTo[string])
		if err != nil {
			t.s.reloadTargetAfter(ctx, tg, err)
			return nil, classify(err)
		}
		for _, h := range won {
			written[h] = true
		}
	}
	return written, nil
}

// signatureGroup is the rows that carry one set of columns, as the JSON array a
// statement takes, and their indexes in the rows given.
type signatureGroup struct {
	cols []string
	body []byte
	rows []int
}

// bySignature groups rows by the columns of the target they carry, in the order
// of the column lists; each row's object in the JSON array carries its bk_hash
// beside its columns. Fields no column takes are noted for the drift counts.
func (t *tx) bySignature(tg *target, rows []apply.TargetRow) ([]*signatureGroup, error) {
	groups := map[string]*signatureGroup{}
	now := time.Now()
	for i, u := range rows {
		row := u.Row
		cols := tg.writable(row)
		if len(cols) < len(row) {
			// Fields no rule mapped and no column takes: counted once the
			// transaction commits, never dropped in silence.
			if t.unmapped == nil {
				t.unmapped = newUnmappedNotes()
			}
			for f, v := range row {
				if !tg.columns[f] {
					t.unmapped.note(tg.entity.Name, strings.ToUpper(f), tg.keyOf(row), v, now)
				}
			}
		}
		sig := strings.Join(cols, ",")
		g := groups[sig]
		if g == nil {
			g = &signatureGroup{cols: cols, body: append(make([]byte, 0, 1024*len(rows)), '[')}
			groups[sig] = g
		} else {
			g.body = append(g.body, ',')
		}
		var err error
		if g.body, err = pipeline.AppendRowJSON(g.body, row, cols); err != nil {
			return nil, err
		}
		// The row's object gets its bk_hash (hex: nothing to escape).
		g.body = append(append(append(append(g.body[:len(g.body)-1], `,"`...), bkField...), `":"`...), u.BKHash...)
		g.body = append(g.body, `"}`...)
		g.rows = append(g.rows, i)
	}
	out := make([]*signatureGroup, 0, len(groups))
	for _, sig := range slices.Sorted(maps.Keys(groups)) {
		g := groups[sig]
		g.body = append(g.body, ']')
		out = append(out, g)
	}
	return out, nil
}

// reloadTargetAfter reads a target table's columns again when err says the table
// changed under the service (a column or the table dropped or renamed: 42703,
// 42P01), so that the next attempt writes what the table has now; the batch meanwhile
// is held like in an outage. It uses a connection of its own: the transaction that
// failed is aborted.
func (s *Store) reloadTargetAfter(ctx context.Context, t *target, err error) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42703" && pgErr.Code != "42P01" {
		return
	}
	fresh, lerr := s.loadTarget(ctx, t.entity)
	if lerr != nil {
		return // the table is gone: the error says so at every attempt
	}
	s.targets.mu.Lock()
	s.targets.m[t.entity.Name] = fresh
	s.targets.mu.Unlock()
}
