package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/syncflow/syncflow/internal/backfill"
)

// A verification holds one connection for its whole run: the source's keys go
// into a temporary table (verify_source), the comparison writes the drifted keys
// into another (verify_drift), and both vanish with the session. PostgreSQL
// joins the three sides (source keys, ledger, target) in one statement, so the
// process holds one page of keys at a time whatever the entity's size.

type verifySession struct {
	s      *Store
	conn   *pgxpool.Conn
	entity string
	target *target
}

// OpenVerify starts a verification of entity.
func (s *Store) OpenVerify(ctx context.Context, entity string) (backfill.VerifySession, error) {
	tg, err := s.target(entity)
	if err != nil {
		return nil, err
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, classify(err)
	}
	// work_mem: the comparison hashes the entity's keys three ways; spilled to
	// disk in many batches it took twice as long. Each hash may take twice
	// work_mem (hash_mem_multiplier): a verification takes up to about 768 MB of
	// the server's memory for a large entity, and spills beyond.
	_, err = conn.Exec(ctx, `
SET work_mem = '128MB';
DROP TABLE IF EXISTS pg_temp.verify_source, pg_temp.verify_drift;
CREATE TEMP TABLE verify_source (bk_hash text NOT NULL, business_key jsonb NOT NULL, ord bigint NOT NULL);
CREATE TEMP TABLE verify_drift (bk_hash text PRIMARY KEY, business_key jsonb NOT NULL, kind text NOT NULL, ledger_ord bigint,
    tombstone boolean NOT NULL DEFAULT false)`)
	if err != nil {
		conn.Release()
		return nil, classify(err)
	}
	return &verifySession{s: s, conn: conn, entity: entity, target: tg}, nil
}

func (v *verifySession) Close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := v.conn.Exec(ctx, `DROP TABLE IF EXISTS pg_temp.verify_source, pg_temp.verify_drift; RESET work_mem`); err != nil {
		// The temporary tables must not outlive the session in a pooled connection.
		_ = v.conn.Conn().Close(ctx)
	}
	v.conn.Release()
}

func (v *verifySession) AddSource(ctx context.Context, keys []backfill.SourceKey) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := v.conn.CopyFrom(ctx, pgx.Identifier{"verify_source"}, []string{"bk_hash", "business_key", "ord"},
		pgx.CopyFromSlice(len(keys), func(i int) ([]any, error) {
			k, err := keyJSON(keys[i].Key)
			return []any{keys[i].BKHash, k, keys[i].Ord}, err
		}))
	return classify(err)
}

// keyJSON is a key's values as a JSON array, without the encoder when no value
// needs escaping (a million keys a verification).
func keyJSON(key []string) (string, error) {
	buf := make([]byte, 0, 32)
	buf = append(buf, '[')
	for i, v := range key {
		for j := 0; j < len(v); j++ {
			if c := v[j]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
				b, err := json.Marshal(key)
				return string(b), err
			}
		}
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(append(append(buf, '"'), v...), '"')
	}
	return string(append(buf, ']')), nil
}

// compareSQL classifies every key of the entity, by the first that applies:
// only in the source, or live in the source and deleted in the ledger at any
// version (missing: a tombstone newer than the source's row would otherwise
// hide it for good); in both, the source newer (stale); only in the ledger and
// live (extra); a live ledger row without a target hash (unhashed), without its
// target row (target-missing) or whose target row hashes differently (target-
// edited). A live ledger newer than the source copy is in sync: the source
// changed after it was read.
func (v *verifySession) compareSQL() string {
	t := v.target
	return `
INSERT INTO verify_drift (bk_hash, business_key, kind, ledger_ord, tombstone)
SELECT bk_hash, business_key, kind, ledger_ord, coalesce(deleted, false) FROM (
    SELECT coalesce(s.bk_hash, r.bk_hash) AS bk_hash, coalesce(s.business_key, r.business_key) AS business_key,
        r.rowversion_ord AS ledger_ord, r.deleted,
        CASE
            WHEN r.bk_hash IS NULL THEN 'missing'
            WHEN s.bk_hash IS NULL THEN CASE WHEN r.deleted THEN NULL ELSE 'extra' END
            WHEN r.deleted THEN 'missing'
            WHEN s.ord > r.rowversion_ord THEN 'stale'
            WHEN r.target_hash IS NULL THEN 'unhashed'
            WHEN r.tk IS NULL THEN 'target-missing'
            WHEN r.th <> r.target_hash THEN 'target-edited'
        END AS kind
    FROM verify_source s
    FULL JOIN (
        SELECT l.bk_hash, l.business_key, l.rowversion_ord, l.deleted, l.target_hash, t.k AS tk, t.h AS th
        FROM bridge.synced_records l
        LEFT JOIN (SELECT ` + t.keyExpr("t") + ` AS k, ` + t.hashExpr("t") + ` AS h FROM ` + t.ident + ` AS t OFFSET 0) t
            ON t.k = l.target_key AND NOT l.deleted
        WHERE l.entity_name = $1
    ) r ON r.bk_hash = s.bk_hash
) x
WHERE kind IS NOT NULL
ON CONFLICT (bk_hash) DO NOTHING`
}

// Compare runs compareSQL. OFFSET 0 keeps the target's hashes computed in
// their subquery: without it the planner carried whole target rows through the
// joins and hashed them at the end.
func (v *verifySession) Compare(ctx context.Context) error {
	if _, err := v.conn.Exec(ctx, `ANALYZE verify_source`); err != nil {
		return classify(err)
	}
	_, err := v.conn.Exec(ctx, v.compareSQL(), v.entity)
	return classify(err)
}

func (v *verifySession) Settle(ctx context.Context) error {
	_, err := v.conn.Exec(ctx, `
DELETE FROM verify_drift d
USING verify_source s, bridge.synced_records r
WHERE d.kind IN ('missing', 'stale') AND s.bk_hash = d.bk_hash
  AND r.entity_name = $1 AND r.bk_hash = d.bk_hash AND r.rowversion_ord >= s.ord AND NOT r.deleted`, v.entity)
	return classify(err)
}

func (v *verifySession) Discard(ctx context.Context, kind backfill.DriftKind, hashes []string) error {
	if len(hashes) == 0 {
		return nil
	}
	_, err := v.conn.Exec(ctx, `DELETE FROM verify_drift WHERE kind = $1 AND bk_hash = ANY ($2)`, string(kind), hashes)
	return classify(err)
}

func (v *verifySession) Summary(ctx context.Context, samples int) (backfill.Comparison, error) {
	c := backfill.Comparison{Counts: map[backfill.DriftKind]int64{}, Samples: map[backfill.DriftKind][][]string{}}
	if err := v.conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM verify_source),
		(SELECT count(*) FROM bridge.synced_records WHERE entity_name = $1 AND NOT deleted)`, v.entity).Scan(&c.SourceRows, &c.LedgerRows); err != nil {
		return c, classify(err)
	}
	// The samples are taken by rank, not by aggregating every key of a kind
	// (right after migration 0006 every row of an entity is unhashed).
	rows, err := v.conn.Query(ctx, `
SELECT c.kind, c.n, coalesce(s.keys, '{}')
FROM (SELECT kind, count(*) AS n FROM verify_drift GROUP BY kind) c
LEFT JOIN (
    SELECT kind, array_agg(business_key ORDER BY business_key) AS keys
    FROM (SELECT kind, business_key, row_number() OVER (PARTITION BY kind ORDER BY business_key) AS rank FROM verify_drift) r
    WHERE rank <= $1 GROUP BY kind
) s USING (kind)`, samples)
	if err != nil {
		return c, classify(err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			kind string
			n    int64
			keys [][]string
		)
		if err := rows.Scan(&kind, &n, &keys); err != nil {
			return c, classify(err)
		}
		c.Counts[backfill.DriftKind(kind)] = n
		c.Samples[backfill.DriftKind(kind)] = keys
	}
	return c, classify(rows.Err())
}

func (v *verifySession) Drifted(ctx context.Context, kinds []backfill.DriftKind, after string, limit int) ([]backfill.DriftedKey, error) {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	rows, err := v.conn.Query(ctx, `SELECT bk_hash, business_key, kind, coalesce(ledger_ord, 0), tombstone FROM verify_drift
		WHERE kind = ANY ($1) AND bk_hash > $2 ORDER BY bk_hash LIMIT $3`, names, after, limit)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backfill.DriftedKey, error) {
		var (
			k    backfill.DriftedKey
			kind string
		)
		err := r.Scan(&k.BKHash, &k.Key, &kind, &k.LedgerOrd, &k.Tombstone)
		k.Kind = backfill.DriftKind(kind)
		return k, err
	})
	return out, classify(err)
}

// RecordVerification keeps one verification in bridge.verifications.
func (s *Store) RecordVerification(ctx context.Context, v backfill.Verification) error {
	c := v.Comparison
	samples, err := json.Marshal(c.Samples)
	if err != nil {
		return err
	}
	var errText *string
	if v.Error != "" {
		errText = &v.Error
	}
	_, err = s.pool.Exec(ctx, `
INSERT INTO bridge.verifications (uid, entity_name, trigger, repair, started_at, finished_at, duration_ms,
    source_rows, ledger_rows, missing, stale, extra, target_edited, target_missing, unhashed, unreadable, published,
    samples, error, replica)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)`,
		v.UID, v.Entity, v.Trigger, v.Repair, v.Started, v.Finished, v.Finished.Sub(v.Started).Milliseconds(),
		c.SourceRows, c.LedgerRows, c.Counts[backfill.Missing], c.Counts[backfill.Stale], c.Counts[backfill.Extra],
		c.Counts[backfill.TargetEdited], c.Counts[backfill.TargetMissing], c.Counts[backfill.Unhashed], c.Counts[backfill.Unreadable], v.Published,
		samples, errText, v.Replica)
	return classify(err)
}

// LastVerifications returns the latest verification of every entity, by name
// (with failed, only the latest that did not fail).
func (s *Store) LastVerifications(ctx context.Context, failed bool) ([]backfill.Verification, error) {
	rows, err := s.pool.Query(ctx, `
SELECT DISTINCT ON (entity_name) uid, entity_name, trigger, repair, started_at, coalesce(finished_at, started_at),
    source_rows, ledger_rows, missing, stale, extra, target_edited, target_missing, unhashed, unreadable, published,
    coalesce(error, ''), coalesce(replica, '')
FROM bridge.verifications WHERE $1 OR error IS NULL ORDER BY entity_name, started_at DESC`, failed)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backfill.Verification, error) {
		var (
			v                                                         backfill.Verification
			missing, stale, extra, edited, gone, unhashed, unreadable int64
		)
		err := r.Scan(&v.UID, &v.Entity, &v.Trigger, &v.Repair, &v.Started, &v.Finished,
			&v.Comparison.SourceRows, &v.Comparison.LedgerRows, &missing, &stale, &extra, &edited, &gone, &unhashed, &unreadable,
			&v.Published, &v.Error, &v.Replica)
		v.Comparison.Counts = map[backfill.DriftKind]int64{backfill.Missing: missing, backfill.Stale: stale, backfill.Extra: extra,
			backfill.TargetEdited: edited, backfill.TargetMissing: gone, backfill.Unhashed: unhashed, backfill.Unreadable: unreadable}
		return v, err
	})
	return out, classify(err)
}
