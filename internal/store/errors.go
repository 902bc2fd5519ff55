package store

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
)

// The kinds of database errors. The store classifies every error it returns once,
// here, from pgx's and pgconn's own types and PostgreSQL's SQLSTATE codes, never by
// matching message text; callers decide with errors.Is.
//
// Only ErrRowRejected is caused by the records themselves. Every other failure is
// the database's: the caller holds the work and tries again later, and no record
// is dead-lettered because of it.
var (
	// ErrRowRejected: the target or the bridge refused the data of a row: SQLSTATE
	// classes 22 (data exception) and 23 (integrity constraint), 21000 (a key written
	// twice in one statement), class 54 (a program limit, such as a value too long
	// for an index) and 42804 (a value of the wrong type). Splitting the work can
	// isolate the rows to blame.
	ErrRowRejected = errors.New("row rejected")
	// ErrUnavailable: the database cannot take the work now: connections refused,
	// reset or closed; the server shutting down, starting or not accepting
	// connections (57P01-57P03, 55000); read-only after a failover (25006);
	// credentials rejected after a rotation (class 28); the database missing
	// (3D000); out of resources (classes 53 and 58); a session ended for idling in a
	// transaction (25P03); a closed pool.
	ErrUnavailable = errors.New("database unavailable")
	// ErrConflict: a serialization failure or a deadlock (40001, 40P01); trying
	// again succeeds.
	ErrConflict = errors.New("transaction conflict")
	// ErrTimeout: a statement or lock timeout (57014, 55P03) or the deadline of the
	// work. Work that keeps timing out is escalated by the caller.
	ErrTimeout = errors.New("timed out")
)

// kindError is an error with its kind.
type kindError struct {
	kind, err error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// classify returns err marked with its kind (see the kinds above); an error of no
// known kind (a schema that changed under us, a bug) is returned as it is, and the
// caller treats it like an unavailable database: it holds the work and retries.
// context.Canceled (a shutdown) is returned as it is.
func classify(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	var already *kindError
	if errors.As(err, &already) {
		return err
	}
	if kind := kindOf(err); kind != nil {
		return &kindError{kind: kind, err: err}
	}
	return err
}

func kindOf(err error) error {
	// A connection that could not be made, whatever the server said while refusing
	// it (a FATAL 28P01, 3D000, 55000 or 57P03 arrives wrapped in a ConnectError).
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return ErrUnavailable
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return sqlstateKind(pgErr.Code)
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err):
		return ErrTimeout
	case errors.Is(err, puddle.ErrClosedPool), errors.Is(err, pgconn.ErrConnClosed),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ErrUnavailable
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return ErrUnavailable
	}
	if pgconn.SafeToRetry(err) {
		// Nothing reached the server: a connection lost before the statement was sent.
		return ErrUnavailable
	}
	return nil
}

// sqlstateKind maps a SQLSTATE to its kind, or nil.
func sqlstateKind(code string) error {
	switch {
	case strings.HasPrefix(code, "22"), strings.HasPrefix(code, "23"), strings.HasPrefix(code, "54"),
		code == "21000", code == "42804":
		return ErrRowRejected
	case code == "40001", code == "40P01":
		return ErrConflict
	case code == "57014", code == "55P03":
		return ErrTimeout
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "28"), strings.HasPrefix(code, "53"),
		strings.HasPrefix(code, "57P"), strings.HasPrefix(code, "58"),
		code == "25006", code == "25P03", code == "3D000", code == "55000":
		return ErrUnavailable
	}
	return nil
}

// Kind names the kind of err for logs, metrics and /readyz: "row rejected",
// "database unavailable", "transaction conflict", "timed out", or "error" for an
// error of no known kind. It never includes the error's text.
func Kind(err error) string {
	for _, k := range []error{ErrRowRejected, ErrUnavailable, ErrConflict, ErrTimeout} {
		if errors.Is(err, k) {
			return k.Error()
		}
	}
	return "error"
}
