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

	"github.com/syncflow/syncflow/internal/apply"
)

// Every error the store returns is classified here, once, into the kinds of
// apply (apply.ErrRowRejected, ErrUnavailable, ErrConflict, ErrTimeout), from
// pgx's and pgconn's own types and PostgreSQL's SQLSTATE codes, never by matching
// message text; callers decide with errors.Is.

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
		return apply.ErrUnavailable
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return sqlstateKind(pgErr.Code)
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err):
		return apply.ErrTimeout
	case errors.Is(err, puddle.ErrClosedPool), errors.Is(err, pgconn.ErrConnClosed),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return apply.ErrUnavailable
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return apply.ErrUnavailable
	}
	if pgconn.SafeToRetry(err) {
		// Nothing reached the server: a connection lost before the statement was sent.
		return apply.ErrUnavailable
	}
	return nil
}

// sqlstateKind maps a SQLSTATE to its kind, or nil.
func sqlstateKind(code string) error {
	switch {
	case strings.HasPrefix(code, "22"), strings.HasPrefix(code, "23"), strings.HasPrefix(code, "54"),
		code == "21000", code == "42804",
		code == "P0001": // a target trigger's RAISE EXCEPTION: ScheduleHub's own validation refused the row
		return apply.ErrRowRejected
	case code == "40001", code == "40P01",
		code == "55P03": // lock_timeout: another session holds what the statement waits for
		return apply.ErrConflict
	case code == "57014":
		return apply.ErrTimeout
	case code == "42703", code == "42P01":
		return apply.ErrTargetChanged
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "28"), strings.HasPrefix(code, "53"),
		strings.HasPrefix(code, "57P"), strings.HasPrefix(code, "58"),
		code == "25006", code == "25P03", code == "3D000", code == "55000":
		return apply.ErrUnavailable
	}
	return nil
}
