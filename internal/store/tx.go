package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
)

// tx is one transaction. Its methods are the statements of the tables, one each,
// in the file of the table they mainly touch; every error they return is
// classified. It is an apply.Tx and a deadletter.Tx.
//
// # Round trips
//
// Statements whose answer nothing waits for (BEGIN, the savepoints, the batch
// counters, the plan mode of a key lookup) are not sent on their own: they wait
// in pending and go with the next statement that returns rows, or with COMMIT,
// in one pipeline (a pgx batch: one write, one Sync, one round trip). A batch of
// a few changes of an entity without children costs three round trips: BEGIN
// with the ledger read, the savepoint with the target and ledger statements
// (Write), and the counters with COMMIT.
//
// PostgreSQL runs a pipeline in order and skips the rest of it after an error,
// so a pending statement runs exactly where it was issued; its error comes back
// from the statement it went with, named after the pending statement. A savepoint
// never opens over a pending statement of the tables (it is sent first), so that
// the error of a counter is never taken for the error of the rows the savepoint
// isolates.
type tx struct {
	s    *Store
	conn *pgx.Conn
	// pending are the statements not sent yet, in order; begun is set once BEGIN
	// has gone to the server.
	pending []pendingStmt
	begun   bool
	sends   int // pipelines sent
	// savepoints numbers the savepoints, never reusing a name; made holds those
	// PostgreSQL has made (a SAVEPOINT behind a failed statement never is).
	savepoints int
	made       map[string]bool
	// unmapped holds the fields no column took, counted once per record, for
	// the drift counts once the transaction commits.
	unmapped *unmappedNotes
}

// pendingStmt is a statement waiting to go with the next one; control marks
// BEGIN, the savepoints and the plan mode, which touch no table.
type pendingStmt struct {
	what      string
	sql       string
	args      []any
	control   bool
	savepoint string // the name a SAVEPOINT makes
}

var (
	_ apply.Tx      = (*tx)(nil)
	_ deadletter.Tx = (*tx)(nil)
)

// InTx runs fn in one transaction and commits when fn returns nil (apply.Store).
func (s *Store) InTx(ctx context.Context, fn func(apply.Tx) error) error {
	return s.inTx(ctx, func(t *tx) error { return fn(t) })
}

func (s *Store) inTx(ctx context.Context, fn func(*tx) error) error {
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return classify(err)
	}
	// A connection given back inside a transaction (a failed ROLLBACK) is closed
	// by the pool, never reused.
	defer c.Release()
	t := &tx{s: s, conn: c.Conn(), made: map[string]bool{}}
	t.later(pendingStmt{what: "BEGIN", sql: "BEGIN", control: true})
	committed := false
	defer func() {
		if !committed && t.begun {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_, _ = t.conn.Exec(rctx, "ROLLBACK") //nolint:errcheck // the pool closes a connection left in a transaction
		}
	}()
	if err := fn(t); err != nil {
		return classify(err)
	}
	if err := t.commit(ctx); err != nil {
		return classify(err)
	}
	committed = true
	if t.unmapped != nil {
		s.drift.merge(t.unmapped)
	}
	return nil
}

// DeadLetters is the store as the sweeper and the retry worker use it
// (deadletter.Store).
type DeadLetters struct{ *Store }

// InTx runs fn in one transaction and commits when fn returns nil.
func (d DeadLetters) InTx(ctx context.Context, fn func(deadletter.Tx) error) error {
	return d.inTx(ctx, func(t *tx) error { return fn(t) })
}

// later queues a statement to go with the next one sent.
func (t *tx) later(p pendingStmt) { t.pending = append(t.pending, p) }

// laterExec queues a statement of the tables that returns nothing.
func (t *tx) laterExec(what, sql string, args ...any) {
	t.later(pendingStmt{what: what, sql: sql, args: args})
}

// statement is a statement to send, and its arguments; setting marks a plan
// setting (plannedBy), whose result the pipeline's reader passes over.
type statement struct {
	sql     string
	args    []any
	setting bool
}

// send sends the pending statements and stmts after them, in one pipeline, and
// reads the pending statements' results. The caller reads the results of stmts
// from the BatchResults returned, in order, and closes it; those of the plan
// settings among stmts are passed over (pipelineResults).
func (t *tx) send(ctx context.Context, stmts ...statement) (pgx.BatchResults, error) {
	if len(t.pending) > 0 && strings.HasPrefix(t.pending[0].sql, "ROLLBACK TO") {
		// An aborted transaction runs nothing before it, not even the parsing
		// of a statement new to the connection that a pipeline starts with.
		if err := t.conn.PgConn().Exec(ctx, t.pending[0].sql).Close(); err != nil {
			return nil, pendingError(t.pending[0], err)
		}
		t.pending = t.pending[1:]
	}
	b := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(t.pending)+len(stmts))}
	pending := t.pending
	t.pending = nil
	t.sends++
	for _, p := range pending {
		b.Queue(p.sql, p.args...)
		if p.what == "BEGIN" {
			t.begun = true
		}
	}
	for _, st := range stmts {
		b.Queue(st.sql, st.args...)
	}
	br := &pipelineResults{BatchResults: t.conn.SendBatch(ctx, b), settings: make([]bool, 0, len(stmts))}
	for _, st := range stmts {
		br.settings = append(br.settings, st.setting)
	}
	for _, p := range pending {
		if _, err := br.BatchResults.Exec(); err != nil {
			_ = br.Close() //nolint:errcheck // the first error is the one to report
			return nil, pendingError(p, err)
		}
		if p.savepoint != "" {
			t.made[p.savepoint] = true
		}
	}
	return br, nil
}

// pipelineResults reads the results of the statements of a pipeline in order,
// passing over those of the plan settings among them: an error of a setting
// is the next read's.
type pipelineResults struct {
	pgx.BatchResults
	settings []bool // of the statements not read yet, in order: whether each is a setting
}

// pass reads the results of the settings before the next statement.
func (r *pipelineResults) pass() error {
	for len(r.settings) > 0 && r.settings[0] {
		r.settings = r.settings[1:]
		if _, err := r.BatchResults.Exec(); err != nil {
			return err
		}
	}
	if len(r.settings) > 0 {
		r.settings = r.settings[1:]
	}
	return nil
}

func (r *pipelineResults) Exec() (pgconn.CommandTag, error) {
	if err := r.pass(); err != nil {
		return pgconn.CommandTag{}, err
	}
	return r.BatchResults.Exec()
}

func (r *pipelineResults) Query() (pgx.Rows, error) {
	if err := r.pass(); err != nil {
		return nil, err
	}
	return r.BatchResults.Query()
}

func (r *pipelineResults) QueryRow() pgx.Row {
	if err := r.pass(); err != nil {
		return errRow{err}
	}
	return r.BatchResults.QueryRow()
}

// errRow is a row whose reading failed.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// pendingError names the pending statement that failed. Its kind is kept, but a
// rejection is not the rows' (only a statement of the rows' own is isolated):
// the transaction fails, and is held and retried.
func pendingError(p pendingStmt, err error) error {
	err = fmt.Errorf("%s: %w", p.what, err)
	if errors.Is(classify(err), apply.ErrRowRejected) {
		return errors.New(err.Error())
	}
	return classify(err)
}

// query runs sql after the pending statements, in one round trip, and returns
// its rows.
func (t *tx) query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if len(t.pending) == 0 {
		return t.conn.Query(ctx, sql, args...)
	}
	if len(args) > 0 && args[0] == customPlan {
		args = args[1:]
		defer t.planCustom()()
	}
	br, err := t.send(ctx, statement{sql: sql, args: args})
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close() //nolint:errcheck // the query's error is the one to report
		return nil, err
	}
	return &pipelinedRows{Rows: rows, br: br}, nil
}

// queryEach runs the lookups stmts after the pending statements, in one round
// trip, and hands the rows of each to its scan, in order. Each must look every
// key up in a LATERAL subquery fenced with OFFSET 0 (readLedgerSQL): they run
// by their generic plans, with no sequential scan (planGeneric), which cannot
// be anything but a lookup by key per key.
func (t *tx) queryEach(ctx context.Context, stmts []statement, scans ...func(pgx.Rows) error) error {
	defer t.planGeneric()()
	br, err := t.send(ctx, stmts...)
	if err != nil {
		return err
	}
	for _, scan := range scans {
		rows, err := br.Query()
		if err == nil {
			err = scan(rows)
			rows.Close()
			err = cmp.Or(err, rows.Err())
		}
		if err != nil {
			_ = br.Close() //nolint:errcheck // the query's error is the one to report
			return err
		}
	}
	return br.Close()
}

// planCustom makes the statements sent next in a pipeline planned afresh, for
// the tables as they are now (a pipeline runs in the connection's mode, so the
// setting does it), and returns what puts the default back after them.
func (t *tx) planCustom() func() {
	if n := len(t.pending); n > 0 && t.pending[n-1].sql == planModeDefault && t.pending[n-1].what == backFromCustom.what {
		t.pending = t.pending[:n-1] // still custom since the last lookup
	} else {
		t.later(pendingStmt{what: "plan mode", sql: planModeCustom, control: true})
	}
	return func() { t.later(backFromCustom) }
}

// planGeneric makes the statements sent next in a pipeline run their generic
// plans, with no sequential scan, and returns what puts the defaults back
// after them. A generic plan is made once per connection (again after a
// partition is added or a table analyzed), so it must not depend on the
// tables' size: it is for statements whose every plan made without sequential
// scans looks each key up by an index, whatever the statistics said when it
// was made. Planning afresh for every call (planCustom) costs more than
// running such a lookup for the few keys of a small batch: at 1,000 events/s
// planning was 40 % of PostgreSQL's time.
//
// PostgreSQL keeps a statement's generic plan, once made, whatever settings
// later runs have: a statement sent under planGeneric must never be sent under
// other settings on the same connection (in the default mode the generic plan
// is made after five runs, sequential scans allowed). Each of them is sent
// from one place only.
//
// Three kinds of statement run so. Lookups of each key in a LATERAL subquery
// fenced with OFFSET 0 (queryEach), which the planner cannot turn into a join.
// The ledger write of Write, whose lookup of each target row is fenced so too
// (sent in the pipeline with plannedBy(genericSettings), the same settings).
// And parking, whose rows' foreign keys point into the partitioned
// sync_batches: PostgreSQL checks each row's key with a statement it caches
// per connection, and in the default mode it planned that check afresh for
// every row (to a plan that prunes the other partitions, since the generic
// plan, which prunes them when it runs, looks dearer), 0.1 to 0.2 ms a row.
// Made for a month analyzed while it held a few batches, the check's generic
// plan with sequential scans allowed scanned the whole month for every key as
// the month grew. The checks run when the statement ends (the keys are not
// deferrable), so they run in this mode. A generic plan locks every partition
// when it runs, not only the key's: the parking transaction holds a lock on
// every month of sync_batches (prune's DETACH already waited for it, on the
// parent).
func (t *tx) planGeneric() func() {
	for _, set := range genericSettings {
		t.later(pendingStmt{what: "plan mode", sql: set, control: true})
	}
	return func() {
		for _, set := range slices.Backward(genericSettings) {
			t.later(pendingStmt{what: "plan mode (generic)", sql: defaultOf(set), control: true})
		}
	}
}

// genericSettings are the settings planGeneric sets.
var genericSettings = []string{planModeGeneric, noSeqScan}

// backFromCustom puts the default plan mode back after statements planned
// afresh (planCustom).
var backFromCustom = pendingStmt{what: "plan mode", sql: planModeDefault, control: true}

// customPlanned returns stmts between the plan modes that have PostgreSQL plan
// them afresh, for the tables as they are now, in a pipeline. A statement that
// finds rows by key through a join is sent so: the generic plan a prepared
// statement settles on after five executions is made once, for the tables as
// large as they were then, and a young installation's tables (empty, or
// analyzed while they held a few rows) had it scan them whole, for every key,
// until the next ANALYZE.
func customPlanned(stmts ...statement) []statement {
	return plannedBy([]string{planModeCustom}, stmts...)
}

// plannedBy returns stmts between settings and the statements that put their
// defaults back, in a pipeline; its reader passes over the settings
// (pipelineResults). Statements sent under genericSettings are bound by what
// planGeneric says: each must look every key up by an index in any plan made
// without sequential scans, and must never be sent under other settings on the
// same connection.
func plannedBy(settings []string, stmts ...statement) []statement {
	out := make([]statement, 0, 2*len(settings)+len(stmts))
	for _, set := range settings {
		out = append(out, statement{sql: set, setting: true})
	}
	out = append(out, stmts...)
	for _, set := range slices.Backward(settings) {
		out = append(out, statement{sql: defaultOf(set), setting: true})
	}
	return out
}

// defaultOf returns the statement that puts back the default of the setting
// set ("SET LOCAL name = value").
func defaultOf(set string) string {
	return "SET LOCAL " + strings.Fields(set)[2] + " TO DEFAULT"
}

const (
	planModeCustom  = "SET LOCAL plan_cache_mode = force_custom_plan"
	planModeGeneric = "SET LOCAL plan_cache_mode = force_generic_plan"
	planModeDefault = "SET LOCAL plan_cache_mode TO DEFAULT"
	noSeqScan       = "SET LOCAL enable_seqscan = off"
)

// exec runs sql after the pending statements, in one round trip.
func (t *tx) exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if len(t.pending) == 0 {
		return t.conn.Exec(ctx, sql, args...)
	}
	if len(args) > 0 && args[0] == customPlan {
		args = args[1:]
		defer t.planCustom()()
	}
	br, err := t.send(ctx, statement{sql: sql, args: args})
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	// Closing reports the statement's error again: the first is the one.
	return tag, cmp.Or(err, br.Close())
}

// commit sends COMMIT with what is pending. A transaction that sent nothing and
// has nothing pending but BEGIN was empty: there is nothing to send.
func (t *tx) commit(ctx context.Context) error {
	if !t.begun && len(t.pending) == 1 {
		t.pending = nil
		return nil
	}
	tag, err := t.exec(ctx, "COMMIT")
	if err != nil {
		return err
	}
	if tag.String() == "ROLLBACK" {
		// An error in the transaction went unnoticed: PostgreSQL rolled it back.
		return pgx.ErrTxCommitRollback
	}
	return nil
}

// pipelinedRows are the rows of the last statement of a pipeline: once read to
// the end (or closed), the pipeline is closed too.
type pipelinedRows struct {
	pgx.Rows
	br     pgx.BatchResults
	closed bool
	err    error
}

func (r *pipelinedRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

func (r *pipelinedRows) Close() {
	if r.closed {
		return
	}
	r.closed = true
	r.Rows.Close()
	r.err = r.br.Close()
}

func (r *pipelinedRows) Err() error { return cmp.Or(r.Rows.Err(), r.err) }

// Savepoint runs fn under a savepoint, rolled back when fn fails. SAVEPOINT,
// RELEASE and ROLLBACK TO go with the next statement; a savepoint under which
// nothing was sent costs nothing.
func (t *tx) Savepoint(ctx context.Context, fn func() error) error {
	if err := t.sendTables(ctx); err != nil {
		return err
	}
	t.savepoints++
	name := "sf_" + strconv.Itoa(t.savepoints)
	t.later(pendingStmt{what: "SAVEPOINT", sql: "SAVEPOINT " + name, control: true, savepoint: name})
	mark, sends, notes := len(t.pending)-1, t.sends, t.unmapped.len()
	err := fn()
	if err == nil && t.sends != sends && t.aborted() {
		// A statement under the savepoint failed and fn went on regardless.
		err = errors.New("a statement under the savepoint failed; it is rolled back")
	}
	if err != nil {
		// The fields of rows the rollback undoes are not counted.
		t.unmapped.truncate(notes)
	}
	if t.sends == sends {
		// Nothing under the savepoint reached the server: what fn queued goes
		// on a success, and is dropped with the savepoint on a failure.
		if err != nil {
			t.pending = t.pending[:mark]
			return classify(err)
		}
		t.pending = append(t.pending[:mark], t.pending[mark+1:]...)
		return nil
	}
	if err != nil {
		// What fn queued since its last statement was sent is undone with the
		// rest; ROLLBACK TO must be the next statement the aborted transaction
		// runs. A savepoint never made (a statement before it in its pipeline
		// failed) leaves the transaction aborted: it cannot commit.
		t.pending = t.pending[:0]
		if !t.made[name] {
			return fmt.Errorf("%w (the savepoint was never made: the transaction cannot go on)", err)
		}
		t.later(pendingStmt{what: "ROLLBACK TO SAVEPOINT", sql: "ROLLBACK TO SAVEPOINT " + name, control: true})
		return classify(err)
	}
	t.later(pendingStmt{what: "RELEASE SAVEPOINT", sql: "RELEASE SAVEPOINT " + name, control: true})
	return nil
}

// aborted says whether the transaction is aborted by a failed statement that
// no pending ROLLBACK TO (of a savepoint under this one) recovers from.
func (t *tx) aborted() bool {
	return t.conn.PgConn().TxStatus() == 'E' && (len(t.pending) == 0 || !strings.HasPrefix(t.pending[0].sql, "ROLLBACK TO"))
}

// sendTables sends the pending statements when one of them touches a table.
func (t *tx) sendTables(ctx context.Context) error {
	for _, p := range t.pending {
		if !p.control {
			_, err := t.exec(ctx, "SELECT 1")
			return err
		}
	}
	return nil
}

// SetStatementTimeout sets statement_timeout for the rest of the transaction.
func (t *tx) SetStatementTimeout(ctx context.Context, d time.Duration) error {
	t.later(pendingStmt{what: "statement timeout", sql: `SELECT set_config('statement_timeout', $1, true)`,
		args: []any{strconv.FormatInt(max(d.Milliseconds(), 1), 10)}, control: true})
	return nil
}
