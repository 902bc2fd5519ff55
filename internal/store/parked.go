package store

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// bridge.pending_children: children parked until their parents are applied, one
// row per child key, with the event's bytes as received.

var parkSQL = `
INSERT INTO bridge.pending_children AS p
    (uid, batch_uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key, child_payload, child_raw,
     child_rowversion, rowversion_ord, source_stream, stream, subject, stream_seq, payload_hash, published_at,
     max_retries, next_retry_at)
SELECT u.uid, $1, $2, u.child_hash, u.parent_entity, u.parent_hash, u.parent_key::jsonb, u.payload::jsonb, u.raw,
       u.rowversion, u.ord, u.src, u.stream, u.subject, u.seq, u.hash, u.published, $3, now() + $4::interval
FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[], $12::text[],
            $13::bigint[], $14::text[], $15::text[], $16::text[], $17::bigint[], $18::bytea[], $19::timestamptz[])
    AS u (uid, child_hash, parent_entity, parent_hash, parent_key, payload, raw, rowversion, ord, src, stream, subject,
          seq, hash, published)
ORDER BY u.child_hash
ON CONFLICT (child_entity, child_bk_hash) DO UPDATE SET
    batch_uid = excluded.batch_uid, parent_entity = excluded.parent_entity, parent_bk_hash = excluded.parent_bk_hash,
    parent_key = excluded.parent_key, child_payload = excluded.child_payload, child_raw = excluded.child_raw,
    child_rowversion = excluded.child_rowversion, rowversion_ord = excluded.rowversion_ord,
    source_stream = excluded.source_stream, stream = excluded.stream, subject = excluded.subject,
    stream_seq = excluded.stream_seq, payload_hash = excluded.payload_hash, published_at = excluded.published_at,
    retry_count = 0, next_retry_at = excluded.next_retry_at
WHERE ` + supersedesSQL("p") + `
RETURNING child_bk_hash`

// Park writes parked rows; one row per child key, so a version not newer than the
// one already parked is refused. It returns the child hashes written.
func (t *tx) Park(ctx context.Context, batch uuid.UUID, entity string, rows []apply.ParkRow, firstRetry time.Duration, maxRetries int) (map[string]bool, error) {
	n := len(rows)
	uids := make([]uuid.UUID, n)
	hashes, pents, phashes, pkeys, rvs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	payloads := make([]*string, n)
	raws := make([][]byte, n)
	srcs, streams, subjects := make([]string, n), make([]string, n), make([]string, n)
	ords, seqs := make([]int64, n), make([]int64, n)
	phash := make([][]byte, n)
	published := make([]*time.Time, n)
	for j, r := range rows {
		key, _ := json.Marshal(r.Parent.Key)
		uids[j] = t.s.NewUID()
		hashes[j], pents[j], phashes[j], pkeys[j] = r.Child.BKHash, r.Parent.Entity, r.Parent.BKHash, string(key)
		payloads[j], raws[j] = parkablePayload(r.Delivery.Data), r.Delivery.Data
		rvs[j], ords[j] = r.Child.RowVersion.Text, r.Child.RowVersion.Ord
		srcs[j], streams[j], subjects[j], seqs[j] = r.Version.Source.Name, r.Delivery.Source.Stream, sanitizeText(r.Delivery.Subject), int64(r.Version.Seq)
		phash[j] = r.Version.Hash
		if !r.Delivery.Published.IsZero() {
			at := r.Delivery.Published
			published[j] = &at
		}
	}
	// Each row's key to its batch is checked against the partitioned
	// sync_batches, by a check planned once per connection, not per row.
	defer t.planGeneric()()
	q, err := t.query(ctx, parkSQL, batch, entity, maxRetries, firstRetry,
		uids, hashes, pents, phashes, pkeys, payloads, raws, rvs, ords, srcs, streams, subjects, seqs, phash, published)
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

// parkablePayload returns the event as jsonb will take it, for reading the parked
// row in psql: the bytes as they are when they are valid UTF-8 without a \u
// escape (nearly always), else re-encoded by jsonbText; nil when the event has no
// JSONB form (a NUL character). The bytes themselves are kept in child_raw.
func parkablePayload(body []byte) *string {
	if utf8.Valid(body) && !bytes.Contains(body, []byte(`\u`)) {
		s := string(body)
		return &s
	}
	return jsonbText(body)
}

// releaseChildrenSQL takes out of the queue, in key order and within the
// bounds, the children waiting for the given parents that are applied (in this
// transaction or a committed one). It skips rows another transaction holds (one
// parking a newer version of the child): waiting for them deadlocked with that
// transaction, and the re-check after commit releases them. The last column
// counts the parked rows locked, to tell whether the bounds cut the release
// short.
//
// releaseOrphansSQL locks, the same way, the unresolved orphan dead letters
// that name the parents. A release runs it only for the parents that
// orphansOfSQL, sent right after releaseChildrenSQL, lists as awaited: most of
// the time no orphan waits, and when some do, they wait for parents other than
// the batch's. Planning it (a join over every month's partition of
// bridge.failed_records, planned afresh for each call's keys) costs more than
// the rest of the release: 1.0 ms of planning against 0.15 ms of running on a
// young schema, 8 ms over 40 monthly partitions, for every parent batch of an
// entity whose orphans wait.
const (
	releaseChildrenSQL = `
WITH k AS (
    SELECT * FROM unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash)),
locked AS (
    SELECT p.uid, octet_length(p.child_raw) AS size
    FROM k, ` + appliedParent + `, bridge.pending_children p
    WHERE p.parent_entity = k.entity_name AND p.parent_bk_hash = k.bk_hash
    ORDER BY p.uid
    LIMIT $3
    FOR UPDATE OF p SKIP LOCKED),
chunk AS (
    SELECT uid FROM (SELECT uid, sum(size) OVER (ORDER BY uid) - size AS before FROM locked) c
    WHERE before < $4),
released AS (
    DELETE FROM bridge.pending_children p USING chunk WHERE p.uid = chunk.uid
    RETURNING p.uid, p.child_entity, p.child_raw, p.source_stream, p.stream, p.subject, p.stream_seq, p.published_at)
SELECT false, uid, child_entity, child_raw, source_stream, coalesce(stream, ''), coalesce(subject, ''),
       coalesce(stream_seq, 0), published_at, (SELECT count(*) FROM locked)
FROM released`
	releaseOrphansSQL = `
WITH k AS (
    SELECT * FROM unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash)),
orphans_locked AS (
    SELECT f.uid, octet_length(f.raw_bytes) AS size
    FROM k, ` + appliedParent + `, bridge.failed_records f
    WHERE f.parent_entity = k.entity_name AND f.parent_bk_hash = k.bk_hash
        AND f.stage_failed = 'orphan' AND f.resolved_at IS NULL
    ORDER BY f.uid
    LIMIT $3
    FOR UPDATE OF f SKIP LOCKED),
orphans AS (
    SELECT f.uid, f.entity_name, f.raw_bytes, f.source_stream, f.stream, f.subject, f.stream_seq, f.published_at
    FROM bridge.failed_records f
    WHERE f.uid IN (SELECT uid FROM (SELECT uid, sum(size) OVER (ORDER BY uid) - size AS before FROM orphans_locked) c
                    WHERE before < $4))
SELECT true, uid, entity_name, raw_bytes, coalesce(source_stream, 'realtime'), coalesce(stream, ''), coalesce(subject, ''),
       coalesce(stream_seq, 0), published_at, (SELECT count(*) FROM orphans_locked)
FROM orphans`
)

// orphanParentApplied is the condition that the parent an orphan (f) names is
// applied, looked up by the ledger's primary key for each orphan (OFFSET 0
// keeps it a lookup, never a join the statistics could turn into a scan). It
// serves the sweeper's round, which has no parents to start from. The releases
// start from their parents (appliedParent): asked of each child found instead,
// it put a cost on every row of the queue, and with the 19,000 parents of a
// mass release's re-check PostgreSQL chose to read the whole queue in uid order
// and scan the parents again for each row (28 s, then the statement timeout).
const orphanParentApplied = `EXISTS (SELECT 1 FROM bridge.synced_records r
            WHERE r.entity_name = f.parent_entity AND r.bk_hash = f.parent_bk_hash AND NOT r.deleted OFFSET 0)`

// orphansListed is how many unresolved orphans orphansOfSQL lists at most.
// When more wait, every parent of a release is asked by key.
const orphansListed = 1000

// orphansOfSQL lists the parents that unresolved orphan dead letters of
// parents' entities wait for, each once, at most orphansListed + 1 of them: a
// thousand orphans of one parent that never came are one line. It takes no
// parameter (the names are literals; catalog entity names are identifiers), so
// PostgreSQL plans it once per connection and set of entities: index-only
// scans of ix_failed_records_orphan_parent, which holds nothing but unresolved
// orphans, merged in key order and stopped at the limit. Read in Go
// (orphansWaiting), it costs what the awaited parents number, where asking
// each parent by key costs a probe of every month for each of them. An orphan
// without a parent hash (only a hand edit makes one) names no parent.
//
// An orphan committed after this statement and before the parent's commit is
// left to the re-check after the commit, as one committed after the check by
// entity was before: should the parent be deleted before that re-check, the
// orphan waits for it, as the orphan of any deleted parent does. (While other
// orphans of the entity waited, the release by key ran a round trip later and
// caught some of those; a lock on the parent's key shared by the sweeper's
// orphaning and the parent's write would close the window.)
func orphansOfSQL(parents []apply.Key) string {
	if len(parents) == 0 {
		return `SELECT '', '' WHERE false`
	}
	var names []string
	for _, p := range parents {
		names = append(names, "'"+strings.ReplaceAll(p.Entity, "'", "''")+"'")
	}
	slices.Sort(names)
	return `SELECT DISTINCT parent_entity, parent_bk_hash FROM bridge.failed_records
WHERE stage_failed = 'orphan' AND resolved_at IS NULL AND parent_bk_hash IS NOT NULL AND parent_entity IN (` + strings.Join(slices.Compact(names), ", ") + `)
LIMIT ` + strconv.Itoa(orphansListed+1)
}

// orphansWaiting reads the rows of orphansOfSQL and returns which of parents
// orphans wait for, in parents' order: all of them when the list was cut short.
func orphansWaiting(rows pgx.Rows, parents []apply.Key) ([]apply.Key, error) {
	awaited := map[apply.Key]bool{}
	if err := scanKeys(rows, awaited); err != nil {
		return nil, err
	}
	if len(awaited) > orphansListed {
		return parents, nil
	}
	return apply.KeysIn(parents, awaited), nil
}

// releaseStatements are the statements of a release for parents: the
// children's, planned afresh for the tables as they are now (as the joins of
// the rows of deletes are: a generic plan made while the queue and the ledger
// were young scans them whole for every parent batch until the next ANALYZE),
// then which parents orphans wait for (readRelease reads them).
func releaseStatements(parents []apply.Key, limit, maxBytes int) []statement {
	return append(customPlanned(statement{sql: releaseChildrenSQL, args: releaseArgs(parents, limit, maxBytes)}),
		statement{sql: orphansOfSQL(parents)})
}

// readRelease reads the results of releaseStatements for parents from br: the
// children taken, and which of parents orphans wait for (for addOrphans, once
// br is closed). It does not close br.
func readRelease(br pgx.BatchResults, parents []apply.Key, limit int) (items []apply.Released, more bool, awaited []apply.Key, err error) {
	q, err := br.Query()
	if err != nil {
		return nil, false, nil, classify(err)
	}
	if items, more, err = readReleased(q, limit); err != nil {
		return nil, false, nil, err
	}
	q, err = br.Query()
	if err != nil {
		return nil, false, nil, classify(err)
	}
	awaited, err = orphansWaiting(q, parents)
	q.Close()
	return items, more, awaited, classify(err)
}

// addOrphans adds to a release's children (items, more) the orphans waiting
// for parents (readRelease's caller runs it once the pipeline is closed, for
// the parents orphans wait for, when there are any), planned afresh as the
// children's statement is.
func (t *tx) addOrphans(ctx context.Context, parents []apply.Key, limit, maxBytes int, items []apply.Released, more bool) ([]apply.Released, bool, error) {
	if len(parents) == 0 {
		return items, more, nil
	}
	rows, err := t.query(ctx, releaseOrphansSQL, append([]any{customPlan}, releaseArgs(parents, limit, maxBytes)...)...)
	if err != nil {
		return nil, false, classify(err)
	}
	taken, moreOrphans, err := readReleased(rows, limit)
	return append(items, taken...), more || moreOrphans, err
}

// TakeReleased runs a release (releaseStatements) for parents; more says the
// bounds left children or orphans behind.
func (t *tx) TakeReleased(ctx context.Context, parents []apply.Key, limit, maxBytes int) (items []apply.Released, more bool, err error) {
	br, err := t.send(ctx, releaseStatements(parents, limit, maxBytes)...)
	if err != nil {
		return nil, false, classify(err)
	}
	items, more, awaited, err := readRelease(br, parents, limit)
	if cerr := br.Close(); err == nil {
		err = classify(cerr)
	}
	if err != nil {
		return nil, false, err
	}
	return t.addOrphans(ctx, awaited, limit, maxBytes, items, more)
}

func releaseArgs(parents []apply.Key, limit, maxBytes int) []any {
	entities, hashes := keyArrays(parents)
	return []any{entities, hashes, limit, maxBytes}
}

// readReleased reads and closes the rows of releaseChildrenSQL or
// releaseOrphansSQL.
func readReleased(rows pgx.Rows, limit int) (items []apply.Released, more bool, err error) {
	defer rows.Close()
	var parked, orphans, parkedLocked, orphansLocked int64
	for rows.Next() {
		it, locked, err := scanReleased(rows)
		if err != nil {
			return nil, false, classify(err)
		}
		if it.Orphan {
			orphans, orphansLocked = orphans+1, locked
		} else {
			parked, parkedLocked = parked+1, locked
		}
		items = append(items, it)
	}
	if err := rows.Err(); err != nil {
		return nil, false, classify(err)
	}
	more = parkedLocked >= int64(limit) || parked < parkedLocked || orphansLocked >= int64(limit) || orphans < orphansLocked
	return items, more, nil
}

// scanReleased reads a row of releaseChildrenSQL, releaseOrphansSQL or
// releasableOrphansSQL: a released child or orphan, and how many rows its kind
// locked.
func scanReleased(rows pgx.Rows) (it apply.Released, locked int64, err error) {
	var (
		entity, src, stream, subject string
		seq                          int64
		published                    *time.Time
	)
	if err := rows.Scan(&it.Orphan, &it.UID, &entity, &it.Delivery.Data, &src, &stream, &subject, &seq, &published, &locked); err != nil {
		return it, 0, err
	}
	it.Delivery.Subject, it.Delivery.Source, it.Delivery.StreamSeq = subject, event.SourceNamed(src), uint64(seq)
	if published != nil {
		it.Delivery.Published = *published
	}
	return it, locked, nil
}

// releasableOrphansSQL finds, whatever their parents, orphan dead letters whose
// parent is applied, within the bounds: the sweeper's safety net for a parent
// whose re-checks after its commit did not run (a process killed right then).
// It reads the unresolved orphans through ix_failed_records_orphan_parent,
// which holds nothing else, in no particular order (ordered by uid, its plan
// at scale walked every dead letter of every month): SKIP LOCKED waits for
// nothing, and what the bounds leave is for the next round. Each orphan's
// parent is looked up by the ledger's primary key (orphanParentApplied), and
// the statement is planned afresh, as a release is: as a join, a generic plan
// made while the tables were young scanned the ledger for every orphan.
const releasableOrphansSQL = `
WITH locked AS (
    SELECT f.uid, octet_length(f.raw_bytes) AS size
    FROM bridge.failed_records f
    WHERE f.stage_failed = 'orphan' AND f.resolved_at IS NULL AND ` + orphanParentApplied + `
    LIMIT $1
    FOR UPDATE OF f SKIP LOCKED)
SELECT true, f.uid, f.entity_name, f.raw_bytes, coalesce(f.source_stream, 'realtime'), coalesce(f.stream, ''),
       coalesce(f.subject, ''), coalesce(f.stream_seq, 0), f.published_at, (SELECT count(*) FROM locked)
FROM bridge.failed_records f
WHERE f.uid IN (SELECT uid FROM (SELECT uid, sum(size) OVER (ORDER BY uid) - size AS before FROM locked) c WHERE before < $2)`

// TakeReleasableOrphans locks the orphan dead letters whose parent is applied,
// within the bounds; more says the bounds left some behind.
func (t *tx) TakeReleasableOrphans(ctx context.Context, limit, maxBytes int) (items []apply.Released, more bool, err error) {
	rows, err := t.query(ctx, releasableOrphansSQL, customPlan, limit, maxBytes)
	if err != nil {
		return nil, false, classify(err)
	}
	defer rows.Close()
	var locked int64
	for rows.Next() {
		it, n, err := scanReleased(rows)
		if err != nil {
			return nil, false, classify(err)
		}
		items, locked = append(items, it), n
	}
	if err := rows.Err(); err != nil {
		return nil, false, classify(err)
	}
	return items, locked >= int64(limit) || int64(len(items)) < locked, nil
}

// markDueSQL and parkedChildrenSQL find rows of the queue by key through a
// join; both are planned afresh (customPlan), as a release is: the generic plan
// of markDueSQL made on a young queue hashed the whole queue. (With statistics
// of a queue analyzed at a few rows, a plan made afresh may still read the
// children due later through ix_pending_children_retry, until the next
// ANALYZE; it runs only when a release was cut short by its bounds.)
//
// markDueSQL makes the children a bounded release left behind due for the
// sweeper now, should the process die before its re-checks release them.
const markDueSQL = `
UPDATE bridge.pending_children p SET next_retry_at = now()
FROM unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash)
WHERE p.parent_entity = k.entity_name AND p.parent_bk_hash = k.bk_hash AND p.next_retry_at > now()`

// MarkDue makes the children waiting for parents due for the sweeper now.
func (t *tx) MarkDue(ctx context.Context, parents []apply.Key) error {
	entities, hashes := keyArrays(parents)
	_, err := t.exec(ctx, markDueSQL, customPlan, entities, hashes)
	return classify(err)
}

// releasableChildrenSQL returns the parents of $1, $2 that children wait for
// and that are applied now; releasableOrphanParentsSQL the same of orphan dead
// letters. Each key is looked up in the queue first, stopped at its first
// child, and only a parent something waits for in the ledger: after a commit
// most parents have nothing waiting (askByKey keeps the order written).
const (
	releasableChildrenSQL = `
SELECT k.entity_name, k.bk_hash
FROM unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash)
CROSS JOIN LATERAL (SELECT 1 FROM bridge.pending_children p
         WHERE p.parent_entity = k.entity_name AND p.parent_bk_hash = k.bk_hash
         LIMIT 1) p
CROSS JOIN ` + appliedParent
	releasableOrphanParentsSQL = `
SELECT k.entity_name, k.bk_hash
FROM unnest($1::text[], $2::text[]) AS k (entity_name, bk_hash)
CROSS JOIN LATERAL (SELECT 1 FROM bridge.failed_records f
         WHERE f.parent_entity = k.entity_name AND f.parent_bk_hash = k.bk_hash
             AND f.stage_failed = 'orphan' AND f.resolved_at IS NULL
         LIMIT 1) f
CROSS JOIN ` + appliedParent
)

// Releasable returns which of parents are applied now and have children or
// orphans waiting (apply.Store), in parents' order. It asks which parents
// orphans wait for and which of parents children wait for, in one round trip;
// only when orphans wait for some of parents, it asks whether those are
// applied, in a second.
func (s *Store) Releasable(ctx context.Context, parents []apply.Key) ([]apply.Key, error) {
	if len(parents) == 0 {
		return nil, nil
	}
	entities, hashes := keyArrays(parents)
	found := map[apply.Key]bool{}
	var awaited []apply.Key
	b := &pgx.Batch{}
	b.Queue(orphansOfSQL(parents)).Query(func(rows pgx.Rows) (err error) { awaited, err = orphansWaiting(rows, parents); return err })
	b.Queue(releasableChildrenSQL, entities, hashes).Query(func(rows pgx.Rows) error { return scanKeys(rows, found) })
	if err := s.askByKey(ctx, b); err != nil {
		return nil, err
	}
	if len(awaited) > 0 {
		entities, hashes := keyArrays(awaited)
		b = &pgx.Batch{}
		b.Queue(releasableOrphanParentsSQL, entities, hashes).Query(func(rows pgx.Rows) error { return scanKeys(rows, found) })
		if err := s.askByKey(ctx, b); err != nil {
			return nil, err
		}
	}
	return apply.KeysIn(parents, found), nil
}

// askSettings are the settings of askByKey's transactions.
var askSettings = []string{planModeGeneric, noSeqScan, "SET LOCAL join_collapse_limit = 1"}

// askByKey sends the questions of b in a read-only transaction of one round
// trip, each by its generic plan (made once per connection: each looks every
// parent up in LATERAL subqueries, which the planner cannot turn around), with
// no sequential scan, and with its joins in the order written: each looks
// parents up by key, and where
// the queue's statistics say most children wait for one parent (a mass
// release), a plan made for them scanned the whole queue for each of the other
// parents of a re-check. A failure rolls the transaction back, so that the
// connection goes back to the pool fit for use (one given back inside a
// transaction is closed by the pool).
func (s *Store) askByKey(ctx context.Context, b *pgx.Batch) error {
	qs := []*pgx.QueuedQuery{{SQL: "BEGIN READ ONLY"}}
	for _, set := range askSettings {
		qs = append(qs, &pgx.QueuedQuery{SQL: set})
	}
	b.QueuedQueries = append(append(qs, b.QueuedQueries...), &pgx.QueuedQuery{SQL: "COMMIT"})
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return classify(err)
	}
	defer c.Release()
	if err := c.SendBatch(ctx, b).Close(); err != nil {
		if c.Conn().PgConn().TxStatus() != 'I' && !c.Conn().IsClosed() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_, _ = c.Exec(rctx, "ROLLBACK") //nolint:errcheck // the pool closes a connection left in a transaction
		}
		return classify(err)
	}
	return nil
}

// The sweep reads what it decides on without the events (they are moved by SQL
// when a child is orphaned, and read in bounded chunks when it is released).
const parkedMetaColumns = `uid, child_entity, child_bk_hash, parent_entity, parent_bk_hash, parent_key::text,
       retry_count, max_retries, created_at, octet_length(child_raw)`

// One statement per way of choosing, each served by its own index: the due rows
// by ix_pending_children_retry, chosen UIDs by the primary key.
const (
	sweepDueSQL = `
SELECT ` + parkedMetaColumns + `
FROM bridge.pending_children
WHERE next_retry_at <= now()
ORDER BY next_retry_at
LIMIT $1
FOR UPDATE SKIP LOCKED`
	sweepUIDsSQL = `
SELECT ` + parkedMetaColumns + `
FROM bridge.pending_children
WHERE uid = ANY ($1)
ORDER BY uid
FOR UPDATE SKIP LOCKED`
	sweepAllSQL = `
SELECT ` + parkedMetaColumns + `
FROM bridge.pending_children
ORDER BY uid
LIMIT $1
FOR UPDATE SKIP LOCKED`
	sweepOlderSQL = `
SELECT ` + parkedMetaColumns + `
FROM bridge.pending_children
WHERE created_at <= now() - $2::interval
ORDER BY created_at
LIMIT $1
FOR UPDATE SKIP LOCKED`
)

// SelectParked locks and returns the parked children sel chooses.
func (t *tx) SelectParked(ctx context.Context, sel deadletter.ParkedSelection, limit int) ([]deadletter.Parked, error) {
	var q pgx.Rows
	var err error
	switch {
	case len(sel.UIDs) > 0:
		q, err = t.query(ctx, sweepUIDsSQL, sel.UIDs)
	case sel.Expire && sel.OlderThan > 0:
		q, err = t.query(ctx, sweepOlderSQL, limit, sel.OlderThan)
	case sel.All || sel.Expire:
		q, err = t.query(ctx, sweepAllSQL, limit)
	default:
		q, err = t.query(ctx, sweepDueSQL, limit)
	}
	if err != nil {
		return nil, classify(err)
	}
	rows, err := pgx.CollectRows(q, scanParked)
	return rows, classify(err)
}

func scanParked(r pgx.CollectableRow) (deadletter.Parked, error) {
	var p deadletter.Parked
	err := r.Scan(&p.UID, &p.Child.Entity, &p.Child.Hash, &p.Parent.Entity, &p.Parent.Hash, &p.ParentKey, &p.Retries, &p.MaxRetries,
		&p.Created, &p.Size)
	return p, err
}

const parkedChildrenSQL = `
SELECT ` + parkedMetaColumns + `
FROM bridge.pending_children
WHERE (child_entity, child_bk_hash) IN (SELECT * FROM unnest($1::text[], $2::text[]))`

// ParkedChildren returns the rows parked for children.
func (t *tx) ParkedChildren(ctx context.Context, children []apply.Key) ([]deadletter.Parked, error) {
	if len(children) == 0 {
		return nil, nil
	}
	entities, hashes := keyArrays(children)
	q, err := t.query(ctx, parkedChildrenSQL, customPlan, entities, hashes)
	if err != nil {
		return nil, classify(err)
	}
	rows, err := pgx.CollectRows(q, scanParked)
	return rows, classify(err)
}

// takeParkedSQL takes chosen rows out of the queue with their events.
const takeParkedSQL = `
DELETE FROM bridge.pending_children WHERE uid = ANY ($1)
RETURNING uid, child_entity, child_raw, source_stream, coalesce(stream, ''), coalesce(subject, ''), stream_seq, published_at`

// waitParkedSQL counts a re-check of rows whose parent is still missing, and sets
// the next.
const waitParkedSQL = `
UPDATE bridge.pending_children p SET retry_count = p.retry_count + 1, next_retry_at = now() + w.delay
FROM unnest($1::uuid[], $2::interval[]) AS w (uid, delay)
WHERE p.uid = w.uid`

// orphanParkedSQL moves parked rows into the dead letters at stage orphan, with
// their events' bytes as received and the parent they waited for, in SQL: the
// events never pass through SyncFlow's memory. A message with an unresolved dead
// letter updates it (upsertFailuresSQL; orphanClaimsSQL runs first).
var orphanParkedSQL, orphanNewSQL = upsertFailuresSQL(`
gone AS (
    DELETE FROM bridge.pending_children p USING unnest($1::uuid[], $2::text[], $3::uuid[]) AS o (uid, reason, new_uid)
    WHERE p.uid = o.uid
    RETURNING p.*, o.reason, o.new_uid)`, `
SELECT g.new_uid AS uid, $4::uuid AS batch_uid, g.child_entity AS entity_name, $5::text AS source_system,
       g.source_stream, g.stream, g.subject, nullif(g.stream_seq, 0) AS stream_seq, g.child_bk_hash AS bk_hash,
       g.child_raw AS raw_bytes, g.child_payload AS raw_data, NULL::jsonb AS normalized_data, 'orphan' AS stage_failed,
       g.reason AS error_message, $6::int AS max_retries, NULL::timestamptz AS next_retry_at,
       g.parent_entity, g.parent_bk_hash, g.published_at
FROM gone g`, 7, `
SELECT entity_name, coalesce(stream, ''), coalesce(stream_seq, 0), error_message FROM ins
UNION ALL
SELECT entity_name, coalesce(stream, ''), coalesce(stream_seq, 0), error_message FROM upd`)

// WaitParked counts a re-check of rows and sets their next.
func (t *tx) WaitParked(ctx context.Context, uids []uuid.UUID, delays []time.Duration) error {
	_, err := t.exec(ctx, waitParkedSQL, uids, delays)
	return classify(err)
}

// OrphanParked moves rows into the dead letters at stage orphan (orphanParkedSQL)
// and returns them as written, for the log.
func (t *tx) OrphanParked(ctx context.Context, batch apply.BatchRow, orphans []deadletter.Orphan, maxRetries int) ([]apply.DeadLetter, error) {
	uids, reasons, newUIDs := make([]uuid.UUID, len(orphans)), make([]string, len(orphans)), make([]uuid.UUID, len(orphans))
	for i, o := range orphans {
		uids[i], reasons[i], newUIDs[i] = o.UID, o.Reason, o.DeadLetterUID
	}
	// The messages of the parked rows, claimed for their new dead letters.
	rows, err := t.query(ctx, `SELECT p.stream, nullif(p.stream_seq, 0), o.new_uid
		FROM bridge.pending_children p JOIN unnest($1::uuid[], $2::uuid[]) AS o (uid, new_uid) ON p.uid = o.uid`, uids, newUIDs)
	if err != nil {
		return nil, classify(err)
	}
	var streams []*string
	var seqs []*int64
	var claimUIDs []uuid.UUID
	for rows.Next() {
		var s *string
		var q *int64
		var u uuid.UUID
		if err := rows.Scan(&s, &q, &u); err != nil {
			rows.Close()
			return nil, classify(err)
		}
		streams, seqs, claimUIDs = append(streams, s), append(seqs, q), append(claimUIDs, u)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, classify(err)
	}
	c, err := t.claimMessages(ctx, streams, seqs, claimUIDs)
	if err != nil {
		return nil, classify(err)
	}
	sql := orphanNewSQL
	if c.updates(streams, seqs, claimUIDs) {
		sql = orphanParkedSQL
	}
	q, err := t.query(ctx, sql, uids, reasons, newUIDs, batch.UID, batch.SourceSystem, maxRetries, c.streams, c.seqs, c.uids)
	if err != nil {
		return nil, classify(err)
	}
	defer q.Close()
	var out []apply.DeadLetter
	for q.Next() {
		var d apply.DeadLetter
		var reason, stream string
		if err := q.Scan(&d.Entity, &stream, &d.Delivery.StreamSeq, &reason); err != nil {
			return nil, classify(err)
		}
		d.Delivery.Source, _ = event.SourceOfStream(stream)
		d.Stage, d.Err = pipeline.StageOrphan, errString(reason)
		out = append(out, d)
	}
	return out, classify(q.Err())
}

// TakeParked takes rows out of the queue, with their events.
func (t *tx) TakeParked(ctx context.Context, uids []uuid.UUID) ([]apply.Released, error) {
	if len(uids) == 0 {
		return nil, nil
	}
	q, err := t.query(ctx, takeParkedSQL, uids)
	if err != nil {
		return nil, classify(err)
	}
	defer q.Close()
	var items []apply.Released
	for q.Next() {
		var (
			it                           apply.Released
			entity, src, stream, subject string
			seq                          int64
			published                    *time.Time
		)
		if err := q.Scan(&it.UID, &entity, &it.Delivery.Data, &src, &stream, &subject, &seq, &published); err != nil {
			return nil, classify(err)
		}
		it.Delivery.Subject, it.Delivery.Source, it.Delivery.StreamSeq = subject, event.SourceNamed(src), uint64(seq)
		if published != nil {
			it.Delivery.Published = *published
		}
		items = append(items, it)
	}
	return items, classify(q.Err())
}

// errString is an error that is its text (a reason read back from the table).
type errString string

func (e errString) Error() string { return string(e) }
