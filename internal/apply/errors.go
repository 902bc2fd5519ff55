package apply

import (
	"context"
	"errors"
	"fmt"
)

// The kinds of database errors. The store classifies every error it returns once,
// at the edge, from its driver's types and the SQLSTATE codes, never by matching
// message text; everyone else decides with errors.Is.
//
// Only ErrRowRejected is caused by the records themselves. Every other failure is
// the database's: the caller holds the work and tries again later, and no record
// is dead-lettered because of it.
var (
	// ErrRowRejected: the target or the bridge refused the data of a row: SQLSTATE
	// classes 22 (data exception) and 23 (integrity constraint), 21000 (a key written
	// twice in one statement), class 54 (a program limit, such as a value too long
	// for an index), 42804 (a value of the wrong type) and P0001 (a target
	// trigger's RAISE EXCEPTION). Splitting the work can isolate the rows to blame.
	ErrRowRejected = errors.New("row rejected")
	// ErrUnavailable: the database cannot take the work now: connections refused,
	// reset or closed; the server shutting down, starting or not accepting
	// connections (57P01-57P03, 55000); read-only after a failover (25006);
	// credentials rejected after a rotation (class 28); the database missing
	// (3D000); out of resources (classes 53 and 58); a session ended for idling in a
	// transaction (25P03); a closed pool.
	ErrUnavailable = errors.New("database unavailable")
	// ErrConflict: another transaction is in the way: a serialization failure, a
	// deadlock (40001, 40P01), or a lock not granted within lock_timeout (55P03:
	// a table locked by DDL or VACUUM FULL, a row held by a long transaction).
	// Trying again succeeds once it is gone; it is never blamed on the rows.
	ErrConflict = errors.New("transaction conflict")
	// ErrTimeout: a statement timeout (57014) or the deadline of the work. Work that
	// keeps timing out is escalated by the caller.
	ErrTimeout = errors.New("timed out")
	// ErrTargetChanged: a target table changed under the service (a column or the
	// table dropped or renamed: 42703, 42P01). The work is held, and prepared
	// again with the rules checked against the table as it is now, so that a
	// value whose column is gone fails its record instead of vanishing.
	ErrTargetChanged = errors.New("target table changed")
	// ErrDeleteHeld: a conflict of one kind (errors.Is ErrConflict): the target
	// row of a delete is held by another transaction that waits for the
	// delete's ledger row (Tx.Write). The write is undone under its savepoint
	// and tried again, which waits for the row in the one lock order.
	ErrDeleteHeld = fmt.Errorf("the target rows of deletes are held by transactions waiting for their ledger rows: %w", ErrConflict)
)

// Kind names the kind of err for logs, metrics and /readyz: "row rejected",
// "database unavailable", "transaction conflict", "timed out", "target table
// changed", or "error" for an error of no known kind. It never includes the error's text.
func Kind(err error) string {
	for _, k := range []error{ErrRowRejected, ErrUnavailable, ErrConflict, ErrTimeout, ErrTargetChanged} {
		if errors.Is(err, k) {
			return k.Error()
		}
	}
	return "error"
}

// isolation says how far a transaction goes to find the records to blame for an
// error.
type isolation struct {
	// timeouts makes a statement or lock timeout count like a rejected row: the
	// batch kept timing out, so its writes are split until the rows to blame are
	// found (they become dead letters at stage write).
	timeouts bool
	// records splits the records themselves (not only their target writes) under
	// savepoints when an error escapes: a row rejected by the bridge tables, or in
	// a release cascade.
	records bool
	// anyError blames every error but an unavailable database or a conflict on
	// the records (the dead-letter retry worker: one record that fails in an
	// unforeseen way must not hold back the others for ever).
	anyError bool
}

// blames reports whether err, from applying some records under a savepoint, is to
// be blamed on those records (and the work split to find them) rather than end
// the transaction.
func (iso isolation) blames(err error) bool {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.Is(err, ErrRowRejected):
		return true
	case errors.Is(err, ErrTimeout):
		return iso.timeouts || iso.anyError
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrConflict):
		return false
	}
	return iso.anyError
}
