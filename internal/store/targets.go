package store

import (
	"cmp"
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
	if err := ctx.Err(); err != nil && len(errs) > 0 {
		return fmt.Errorf("target tables: %w", err) // stopped, not a table to fix
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
		if v, ok := row[k].(string); ok {
			b.WriteString(v)
		} else {
			fmt.Fprint(&b, row[k])
		}
		b.WriteByte('\x1f')
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

// plainUpsertSQL returns the multi-row upsert of one set of columns, rows in the
// order of the JSON array ($1), and nothing else: the ledger rows follow in a
// statement of their own (writeLedgerSQL).
func (t *target) plainUpsertSQL(cols []string) string {
	return t.cached("plain "+strings.Join(cols, ","), func() string {
		list := quotedList(cols)
		return "INSERT INTO " + t.ident + " AS t (" + list + ") SELECT " + list +
			" FROM jsonb_populate_recordset(NULL::" + t.ident + ", $1::jsonb) " + t.onConflict(cols)
	})
}

// writeLedgerSQL returns the ledger write of Write: the ledger rows in key order,
// each where it supersedes the row there (as WriteLedger), each written target
// row's key and hash read from the table as stored (after its defaults and
// triggers) by the key its row carries ($11, null for a row whose target is not
// upserted). A row the table does not have under that key (a trigger changed
// the key or skipped the row) leaves the ledger row's key and hash as they were.
// It runs by its generic plan (genericSettings): each target row is looked up
// by its key in a subquery fenced with OFFSET 0 (storedLookup), and the ledger
// row by the conflict on its primary key, whatever the statistics; planned
// afresh, it cost about as much to plan as to run (0.4 ms a call at 1,000
// events/s).
func (t *target) writeLedgerSQL() string {
	return t.cached("ledger", func() string {
		return `INSERT INTO bridge.synced_records AS r
    (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream,
     stream_seq, payload_hash, deleted, batch_uid, target_hash, target_key)
SELECT $1, u.bk_hash, u.business_key::jsonb, u.rowversion, u.ord, u.src, u.seq, u.hash, u.deleted, $2, s.h, s.k
FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::bytea[], $10::bool[], $11::jsonb[])
    AS u (bk_hash, business_key, rowversion, ord, src, seq, hash, deleted, tkey)
` + t.storedLookup() + `
ORDER BY u.bk_hash
` + ledgerUpdate + `,
    target_hash = coalesce(excluded.target_hash, r.target_hash), target_key = coalesce(excluded.target_key, r.target_key)
WHERE ` + supersedesSQL("r") + `
RETURNING bk_hash`
	})
}

// rewriteHashSQL returns the update of the ledger rows of repair rewrites ($2,
// with their target keys $3): they keep their version, and learn the key and
// hash of the target row as stored, as writeLedgerSQL's rows do, where the
// ledger still holds the version rewritten (its rowversion $4 and payload hash
// $5, not deleted). It returns those keys' hashes: a rewrite whose version was
// overtaken after the ledger was read wrote an old row, for the caller to undo.
func (t *target) rewriteHashSQL() string {
	return t.cached("rewrite", func() string {
		return `UPDATE bridge.synced_records AS r SET target_hash = coalesce(s.h, r.target_hash), target_key = coalesce(s.k, r.target_key)
FROM unnest($2::text[], $3::jsonb[], $4::bigint[], $5::bytea[]) AS u (bk_hash, tkey, ord, hash)
` + t.storedLookup() + `
WHERE r.entity_name = $1 AND r.bk_hash = u.bk_hash
    AND r.rowversion_ord = u.ord AND r.payload_hash = u.hash AND NOT r.deleted
RETURNING r.bk_hash`
	})
}

// lockSQL locks the rows whose keys are in $1 (a JSON array of objects of the key
// columns), in the array's order: the rows of deletes, in Write's lock order.
func (t *target) lockSQL() string {
	return t.cached("lock", func() string {
		return `SELECT 1 FROM ` + t.ident + ` AS t, jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e (obj, n),
    jsonb_populate_record(NULL::` + t.ident + `, e.obj) AS x
WHERE ` + t.keyMatch("t", "x") + `
ORDER BY e.n
FOR UPDATE OF t`
	})
}

// deleteWonSQL removes (or, for soft delete, marks) the target rows of deletes
// ($2, their target keys $3) whose ledger rows hold their versions ($4-$6): those
// whose ledger write won. It locks them first, skipping a row another
// transaction holds: that one took the row after this one's lockSQL (an insert
// this one could not see then, since committed) and waits for the ledger row
// this one holds. It returns the hashes of those rows, for the caller to undo
// the write and wait for the row in the one lock order (apply.ErrDeleteHeld).
func (t *target) deleteWonSQL() string {
	return t.cached("delete won", func() string {
		del := "DELETE FROM " + t.ident + " AS t USING l WHERE " + t.keyMatch("t", "(l.x)")
		if t.entity.Delete == catalog.DeleteSoft {
			sd := pgx.Identifier{t.entity.SoftDeleteColumn}.Sanitize()
			del = "UPDATE " + t.ident + " AS t SET " + sd + " = now() FROM l WHERE " + t.keyMatch("t", "(l.x)") + " AND t." + sd + " IS NULL"
		}
		return `WITH w AS (
    SELECT u.bk_hash, x FROM unnest($2::text[], $3::jsonb[], $4::bigint[], $5::text[], $6::bigint[]) AS u (bk_hash, tkey, ord, src, seq),
        jsonb_populate_record(NULL::` + t.ident + `, u.tkey) AS x, bridge.synced_records AS r
    WHERE r.entity_name = $1 AND r.bk_hash = u.bk_hash AND r.deleted
        AND r.rowversion_ord = u.ord AND r.source_stream = u.src AND r.stream_seq = u.seq),
l AS (SELECT w.bk_hash, w.x FROM ` + t.ident + ` AS t, w WHERE ` + t.keyMatch("t", "(w.x)") + ` FOR UPDATE OF t SKIP LOCKED),
d AS (` + del + `)
SELECT w.bk_hash FROM w
WHERE EXISTS (SELECT 1 FROM ` + t.ident + ` AS t WHERE ` + t.keyMatch("t", "(w.x)") + `)
    AND w.bk_hash NOT IN (SELECT bk_hash FROM l)`
	})
}

// keyMatch is the condition that rows a and b have the same key.
func (t *target) keyMatch(a, b string) string {
	conds := make([]string, len(t.key))
	for i, k := range t.key {
		q := pgx.Identifier{k}.Sanitize()
		conds[i] = a + "." + q + " = " + b + "." + q
	}
	return strings.Join(conds, " AND ")
}

// storedLookup joins each u.tkey (a JSON object of the key columns) with the key
// and hash of the target row stored under it (s.k, s.h; null when none), one
// lookup by key each.
func (t *target) storedLookup() string {
	return `LEFT JOIN LATERAL (SELECT ` + t.keyExpr("t") + ` AS k, ` + t.hashExpr("t") + ` AS h
    FROM ` + t.ident + ` AS t, jsonb_populate_record(NULL::` + t.ident + `, u.tkey) AS x
    WHERE ` + t.keyMatch("t", "x") + ` OFFSET 0) s ON true`
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

// Write writes rows of entity in the one order every transaction takes its
// locks in, whether the keys are new or not: first the target rows, all of them
// in key order (one statement per run of rows in key order that carry the same
// columns, or that are deletes, whose rows it locks), then the ledger rows in
// key order, each with what its target row holds once written (writeLedgerSQL).
// Two transactions writing the same keys meet on the first of them and cannot
// deadlock. Deletes go last, only where the ledger row took the delete
// (deleteWonSQL): a delete finds no row another transaction inserted and has not
// committed, and does not wait for it; the ledger row does. The statements go
// in one round trip, with the release (releaseStatements) after them when asked for.
// It returns the hashes whose ledger rows it wrote, and those of the repair
// rewrites whose version the ledger still holds.
func (t *tx) Write(ctx context.Context, entity string, batch uuid.UUID, rows []apply.WriteRow, release *apply.ReleaseAfter) (apply.Written, error) {
	tg, err := t.s.target(entity)
	if err != nil {
		return apply.Written{}, err
	}
	rows = inKeyOrder(rows)
	stmts, err := t.runs(tg, rows)
	if err != nil {
		return apply.Written{}, err
	}
	runs := 0 // the statements of the target rows, whose results are read first
	for _, st := range stmts {
		if !st.setting {
			runs++
		}
	}
	ledger := make([]apply.LedgerRow, len(rows))
	tkeys := make([][]byte, len(rows))
	var rewrites, deletes ledgerKeys
	for i, r := range rows {
		ledger[i] = r.LedgerRow
		if !r.Target {
			continue
		}
		key, err := pipeline.AppendRowJSON(nil, r.Row, tg.key)
		if err != nil {
			return apply.Written{}, err
		}
		switch {
		case r.Deleted:
			deletes.add(r, key)
		case r.Rewrite:
			rewrites.add(r, key)
			fallthrough
		default:
			tkeys[i] = key
		}
	}
	a := ledgerArraysOf(ledger)
	stmts = append(stmts, plannedBy(genericSettings, statement{sql: tg.writeLedgerSQL(),
		args: []any{entity, batch, a.hashes, a.keys, a.versions, a.ords, a.srcs, a.seqs, a.payloads, a.deleted, tkeys}})...)
	var joins []statement
	if len(rewrites.hashes) > 0 {
		joins = append(joins, statement{sql: tg.rewriteHashSQL(), args: []any{entity, rewrites.hashes, rewrites.keys, rewrites.ords, rewrites.payloads}})
	}
	if len(deletes.hashes) > 0 {
		joins = append(joins, statement{sql: tg.deleteWonSQL(), args: []any{entity, deletes.hashes, deletes.keys, deletes.ords, deletes.srcs, deletes.seqs}})
	}
	if len(joins) > 0 {
		stmts = append(stmts, customPlanned(joins...)...)
	}
	if release != nil {
		stmts = append(stmts, releaseStatements(release.Parents, release.Limit, release.MaxBytes)...)
	}
	var br pgx.BatchResults
	fail := func(err error) (apply.Written, error) {
		if br != nil {
			_ = br.Close() //nolint:errcheck // the statement's error is the one to report
		}
		t.s.reloadTargetAfter(ctx, tg, err)
		return apply.Written{}, classify(err)
	}
	if br, err = t.send(ctx, stmts...); err != nil {
		return fail(err)
	}
	for range runs {
		if _, err := br.Exec(); err != nil {
			return fail(err)
		}
	}
	hashes := func() ([]string, error) {
		q, err := br.Query()
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(q, pgx.RowTo[string])
	}
	won, err := hashes()
	if err != nil {
		return fail(err)
	}
	if len(rewrites.hashes) > 0 {
		kept, err := hashes()
		if err != nil {
			return fail(err)
		}
		won = append(won, kept...)
	}
	if len(deletes.hashes) > 0 {
		held, err := hashes()
		if err != nil {
			return fail(err)
		}
		if len(held) > 0 {
			_ = br.Close() //nolint:errcheck // the statements went through
			return apply.Written{}, fmt.Errorf("%w (%d of them)", apply.ErrDeleteHeld, len(held))
		}
	}
	var (
		out     apply.Written
		awaited []apply.Key
	)
	if release != nil {
		if out.Released, out.More, awaited, err = readRelease(br, release.Parents, release.Limit); err != nil {
			return fail(err)
		}
	}
	if err := br.Close(); err != nil {
		return fail(err)
	}
	if len(awaited) > 0 {
		if out.Released, out.More, err = t.addOrphans(ctx, awaited, release.Limit, release.MaxBytes, out.Released, out.More); err != nil {
			return apply.Written{}, err
		}
	}
	out.Hashes = make(map[string]bool, len(won))
	for _, h := range won {
		out.Hashes[h] = true
	}
	return out, nil
}

// ledgerKeys are rows of a Write as arrays: their key hashes, their target keys
// (JSON objects of the key columns) and their versions.
type ledgerKeys struct {
	hashes, srcs   []string
	keys, payloads [][]byte
	ords, seqs     []int64
}

func (k *ledgerKeys) add(r apply.WriteRow, key []byte) {
	k.hashes, k.keys, k.payloads = append(k.hashes, r.Record.BKHash), append(k.keys, key), append(k.payloads, r.Version.Hash)
	k.ords, k.srcs, k.seqs = append(k.ords, r.Record.RowVersion.Ord), append(k.srcs, r.Version.Source.Name), append(k.seqs, int64(r.Version.Seq))
}

// runs cuts the target rows of rows (in key order) into runs of rows that carry
// the same columns (upserted), or that are deletes (locked: deleteWonSQL deletes
// them): one statement each.
func (t *tx) runs(tg *target, rows []apply.WriteRow) ([]statement, error) {
	var (
		out   []statement
		sig   string
		cols  []string
		body  []byte
		shape *rowShape
	)
	flush := func() {
		if body == nil {
			return
		}
		body = append(body, ']')
		if sig == "delete" {
			out = append(out, customPlanned(statement{sql: tg.lockSQL(), args: []any{body}})...)
		} else {
			out = append(out, statement{sql: tg.plainUpsertSQL(cols), args: []any{body}})
		}
		body = nil
	}
	now := time.Now()
	for _, r := range rows {
		if !r.Target {
			continue
		}
		next, nextCols := "delete", tg.key
		if !r.Deleted {
			shape = t.shapeNoting(tg, r.Row, r.Record.BKHash, shape, now)
			next, nextCols = shape.sig, shape.cols
		}
		if next != sig {
			flush()
			sig, cols, body = next, nextCols, []byte{'['}
		} else {
			body = append(body, ',')
		}
		var err error
		if body, err = pipeline.AppendRowJSON(body, r.Row, cols); err != nil {
			return nil, err
		}
	}
	flush()
	return out, nil
}

// inKeyOrder returns a copy of rows sorted by bk_hash, the rows of one hash in
// the order given. It sorts the rows' positions and then copies each row once:
// a row is a large value of strings and maps, and sorting the rows themselves
// (a stable sort moves each many times) cost a tenth of a drain's CPU, most of
// it in the collector's write barriers.
func inKeyOrder(rows []apply.WriteRow) []apply.WriteRow {
	order := make([]int32, len(rows))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		if c := strings.Compare(rows[a].Record.BKHash, rows[b].Record.BKHash); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	out := make([]apply.WriteRow, len(rows))
	for i, j := range order {
		out[i] = rows[j]
	}
	return out
}

// rowShape is the fields a row carries: the target's columns, sorted, and the
// fields no column takes, with the signature of the statement that writes such
// rows. The rows of an entity nearly always carry the same fields, so a shape
// is worked out once and used again for every next row that fits it.
type rowShape struct {
	cols     []string
	unmapped []string // the fields no column takes, as the row names them
	upper    []string // the same, upper case, as the drift counts name them
	sig      string
}

// fits says whether row carries exactly the fields of s.
func (s *rowShape) fits(row map[string]any) bool {
	if s == nil || len(row) != len(s.cols)+len(s.unmapped) {
		return false
	}
	for _, f := range s.cols {
		if _, ok := row[f]; !ok {
			return false
		}
	}
	for _, f := range s.unmapped {
		if _, ok := row[f]; !ok {
			return false
		}
	}
	return true
}

// shapeNoting returns the shape of row (last, when row fits it), and notes the
// fields no column takes for the drift counts, once per record (its bkHash, or
// its target key for a row written without one): counted once the transaction
// commits, never dropped in silence.
func (t *tx) shapeNoting(tg *target, row map[string]any, bkHash string, last *rowShape, now time.Time) *rowShape {
	shape := last
	if !last.fits(row) {
		cols := tg.writable(row)
		shape = &rowShape{cols: cols, sig: "upsert " + strings.Join(cols, ",")}
		for f := range row {
			if !tg.columns[f] {
				shape.unmapped = append(shape.unmapped, f)
				shape.upper = append(shape.upper, strings.ToUpper(f))
			}
		}
	}
	if len(shape.unmapped) > 0 {
		if t.unmapped == nil {
			t.unmapped = newUnmappedNotes()
		}
		record := bkHash
		if record == "" {
			record = tg.keyOf(row)
		}
		for i, f := range shape.unmapped {
			t.unmapped.note(tg.entity.Name, shape.upper[i], record, row[f], now)
		}
	}
	return shape
}

// signatureGroup is the rows that carry one set of columns, as the JSON array a
// statement takes.
type signatureGroup struct {
	cols []string
	body []byte
}

// bySignature groups rows by the columns of the target they carry, in the order
// of the column lists; each row's object in the JSON array carries its bk_hash
// beside its columns. Fields no column takes are noted for the drift counts.
func (t *tx) bySignature(tg *target, rows []apply.TargetRow) ([]*signatureGroup, error) {
	groups := map[string]*signatureGroup{}
	now := time.Now()
	var shape *rowShape
	for _, u := range rows {
		row := u.Row
		shape = t.shapeNoting(tg, row, u.BKHash, shape, now)
		g := groups[shape.sig]
		if g == nil {
			g = &signatureGroup{cols: shape.cols, body: append(make([]byte, 0, 1024*len(rows)), '[')}
			groups[shape.sig] = g
		} else {
			g.body = append(g.body, ',')
		}
		var err error
		if g.body, err = pipeline.AppendRowJSON(g.body, row, shape.cols); err != nil {
			return nil, err
		}
		// The row's object gets its bk_hash (hex: nothing to escape).
		g.body = append(append(append(append(g.body[:len(g.body)-1], `,"`...), bkField...), `":"`...), u.BKHash...)
		g.body = append(g.body, `"}`...)
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
