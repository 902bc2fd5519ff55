package store

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// bridge.synced_records, the ledger: one row per (entity, key hash) with the
// version applied, a hash of its mapped payload and a tombstone flag.

// readLedgerSQL looks each key up by the primary key, one lookup per key in
// the order given: OFFSET 0 makes the lateral subquery a fence the planner
// cannot turn into a join. As a join, it was planned from the statistics, which
// a young ledger lacks (autovacuum analyzes it a minute or more after it starts
// growing): with a fresh ledger under load PostgreSQL hashed all the entity's
// rows for every batch, hundreds of milliseconds each at 100,000 rows. (The
// bk_hash = ANY ($2) form before it fell to a sequential scan under a generic
// plan.) It takes no lock: Write takes every lock of a key, the target row's
// first, and its guards decide.
const readLedgerSQL = `
SELECT r.bk_hash, r.rowversion_ord, r.source_stream, r.stream_seq, r.payload_hash, r.deleted
FROM unnest($2::text[]) AS k (bk_hash),
LATERAL (SELECT * FROM bridge.synced_records r
         WHERE r.entity_name = $1 AND r.bk_hash = k.bk_hash
         OFFSET 0) r`

// ReadLedger reads the ledger rows of entity's keys, without locking them (the
// versions read may be overtaken before the write; Write's guards catch that);
// which of parents are applied (as ParentsPresent) comes in the same round trip.
func (t *tx) ReadLedger(ctx context.Context, entity string, hashes []string, parents []apply.Key) (map[string]pipeline.Applied, map[apply.Key]bool, error) {
	applied := make(map[string]pipeline.Applied, len(hashes))
	present := map[apply.Key]bool{}
	var stmts []statement
	var scans []func(pgx.Rows) error
	if len(hashes) > 0 {
		stmts = append(stmts, statement{sql: readLedgerSQL, args: []any{entity, slices.Sorted(slices.Values(hashes))}})
		scans = append(scans, func(rows pgx.Rows) error { return scanApplied(rows, applied) })
	}
	if len(parents) > 0 {
		entities, keys := keyArrays(parents)
		stmts = append(stmts, statement{sql: presentParentsSQL, args: []any{entities, keys}})
		scans = append(scans, func(rows pgx.Rows) error { return scanKeys(rows, present) })
	}
	if len(stmts) == 0 {
		return applied, present, nil
	}
	if err := t.queryEach(ctx, stmts, scans...); err != nil {
		return nil, nil, classify(err)
	}
	return applied, present, nil
}

// scanApplied reads the rows of readLedgerSQL into applied.
func scanApplied(rows pgx.Rows, applied map[string]pipeline.Applied) error {
	for rows.Next() {
		var (
			hash, src string
			ord, seq  int64
			payload   []byte
			deleted   bool
		)
		if err := rows.Scan(&hash, &ord, &src, &seq, &payload, &deleted); err != nil {
			return err
		}
		applied[hash] = pipeline.Applied{
			Version: pipeline.Version{Ord: ord, Source: event.SourceNamed(src), Seq: uint64(seq), Hash: payload},
			Deleted: deleted,
		}
	}
	return rows.Err()
}

// supersedesSQL is pipeline.Supersedes in SQL, for an ON CONFLICT guard: the
// excluded row replaces the row aliased as alias when its (rowversion, realtime,
// stream sequence) is greater (a realtime version beats a backfill one of the same
// rowversion), or when it is the same event with another payload hash.
func supersedesSQL(alias string) string {
	return `((excluded.rowversion_ord, excluded.source_stream = 'realtime', excluded.stream_seq)
        > (` + alias + `.rowversion_ord, ` + alias + `.source_stream = 'realtime', ` + alias + `.stream_seq)
    OR ((excluded.rowversion_ord, excluded.source_stream, excluded.stream_seq)
        = (` + alias + `.rowversion_ord, ` + alias + `.source_stream, ` + alias + `.stream_seq)
        AND excluded.payload_hash IS DISTINCT FROM ` + alias + `.payload_hash))`
}

// ledgerUpdate is the ON CONFLICT clause of a ledger write, without its guard.
const ledgerUpdate = `ON CONFLICT (entity_name, bk_hash) DO UPDATE SET
    business_key = excluded.business_key, rowversion = excluded.rowversion,
    rowversion_ord = excluded.rowversion_ord, source_stream = excluded.source_stream,
    stream_seq = excluded.stream_seq, payload_hash = excluded.payload_hash,
    deleted = excluded.deleted, batch_uid = excluded.batch_uid, updated_at = now()`

var upsertLedgerSQL = `
INSERT INTO bridge.synced_records AS r
    (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream,
     stream_seq, payload_hash, deleted, batch_uid)
SELECT $1, u.bk_hash, u.business_key::jsonb, u.rowversion, u.ord, u.src, u.seq, u.hash, u.deleted, $2
FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::bytea[], $10::bool[])
    AS u (bk_hash, business_key, rowversion, ord, src, seq, hash, deleted)
ORDER BY u.bk_hash
` + ledgerUpdate + `
WHERE ` + supersedesSQL("r") + `
RETURNING bk_hash`

// WriteLedger writes ledger rows, each only where it supersedes the row there, and
// returns the key hashes it wrote. Keys go in order: two transactions inserting
// overlapping new keys take their index entries in the same order and cannot
// deadlock.
func (t *tx) WriteLedger(ctx context.Context, entity string, batch uuid.UUID, rows []apply.LedgerRow) (map[string]bool, error) {
	a := ledgerArraysOf(rows)
	q, err := t.query(ctx, upsertLedgerSQL, entity, batch, a.hashes, a.keys, a.versions, a.ords, a.srcs, a.seqs, a.payloads, a.deleted)
	if err != nil {
		return nil, classify(err)
	}
	won, err := pgx.CollectRows(q, pgx.RowTo[string])
	if err != nil {
		return nil, classify(err)
	}
	accepted := make(map[string]bool, len(won))
	for _, h := range won {
		accepted[h] = true
	}
	return accepted, nil
}

// ledgerArrays are ledger rows as the arrays a statement takes, one per column.
type ledgerArrays struct {
	hashes, keys, versions, srcs []string
	ords, seqs                   []int64
	payloads                     [][]byte
	deleted                      []bool
}

func ledgerArraysOf(rows []apply.LedgerRow) ledgerArrays {
	n := len(rows)
	a := ledgerArrays{hashes: make([]string, n), keys: make([]string, n), versions: make([]string, n), srcs: make([]string, n),
		ords: make([]int64, n), seqs: make([]int64, n), payloads: make([][]byte, n), deleted: make([]bool, n)}
	for j, r := range rows {
		key, _ := json.Marshal(r.Record.Key)
		a.hashes[j], a.keys[j] = r.Record.BKHash, string(key)
		a.versions[j], a.ords[j] = r.Record.RowVersion.Text, r.Record.RowVersion.Ord
		a.srcs[j], a.seqs[j] = r.Version.Source.Name, int64(r.Version.Seq)
		a.payloads[j], a.deleted[j] = r.Version.Hash, r.Deleted
	}
	return a
}

// presentParentsSQL looks each key up by the primary key (appliedParent).
const presentParentsSQL = `
SELECT k.entity_name, k.bk_hash
FROM unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash), ` + appliedParent

// appliedParent keeps the parents k (entity_name, bk_hash) that are applied,
// looking each up by the primary key: OFFSET 0 keeps the lateral subquery a
// lookup per key, as in readLedgerSQL, whatever the statistics say of the
// ledger, and whatever they said when a prepared statement's generic plan was
// made.
const appliedParent = `LATERAL (SELECT 1 FROM bridge.synced_records r
         WHERE r.entity_name = k.entity_name AND r.bk_hash = k.bk_hash AND NOT r.deleted
         OFFSET 0) r`

// ParentsPresent returns which of keys are applied (in the ledger and not
// deleted). It takes no lock: a parent applied by another transaction at the same
// moment is caught by the re-check after commit.
func (t *tx) ParentsPresent(ctx context.Context, keys []apply.Key) (map[apply.Key]bool, error) {
	_, present, err := t.ReadLedger(ctx, "", nil, keys)
	return present, err
}

// scanKeys reads rows of (entity, bk_hash) into set.
func scanKeys(rows pgx.Rows, set map[apply.Key]bool) error {
	for rows.Next() {
		var k apply.Key
		if err := rows.Scan(&k.Entity, &k.Hash); err != nil {
			return err
		}
		set[k] = true
	}
	return rows.Err()
}

// keyArrays returns keys as the two arrays the statements take.
func keyArrays(keys []apply.Key) (entities, hashes []string) {
	entities, hashes = make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		entities[i], hashes[i] = k.Entity, k.Hash
	}
	return entities, hashes
}

// EntitiesApplied returns which of entities have rows in the ledger.
func (s *Store) EntitiesApplied(ctx context.Context, entities []string) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT e FROM unnest($1::text[]) AS e
		WHERE EXISTS (SELECT 1 FROM bridge.synced_records r WHERE r.entity_name = e)`, entities)
	if err != nil {
		return nil, classify(err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// ForgetVersions deletes entity's ledger rows, a thousand at a time: what was
// applied of it is forgotten, so that the next version of every key is applied
// whatever its rowversion. It returns how many.
func (s *Store) ForgetVersions(ctx context.Context, entity string) (int64, error) {
	n, err := s.chunked(ctx, `DELETE FROM bridge.synced_records WHERE (entity_name, bk_hash) IN
		(SELECT entity_name, bk_hash FROM bridge.synced_records WHERE entity_name = $1 LIMIT 1000)`, args{entity})
	return n, classify(err)
}

// customPlan, as a statement's first argument, has PostgreSQL plan it afresh on
// every execution, for the table as large as it is now (an unnamed statement,
// its description cached). The generic plan a prepared statement settles on is
// made once: made while a fresh ledger fits in a page, it scans the page for
// every key, and keeps scanning the growing ledger until the next ANALYZE.
const customPlan = pgx.QueryExecModeCacheDescribe
