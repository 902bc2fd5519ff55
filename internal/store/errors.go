package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/redact"
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

// notConnected says why a connection to the database at url could not be
// made, with what to do when PostgreSQL said why (refused). err is redacted
// and kept (errors.Is still sees its kind).
func notConnected(url string, err error) error {
	if r := refused(url, err); r != nil {
		return r
	}
	return fmt.Errorf("database %s is not reachable: %w", RedactURL(url), redact.Error(err))
}

// refused is the error, with what to do, of a connection PostgreSQL refused
// because the database does not exist or the credentials are wrong, and nil
// for any other err.
func refused(url string, err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return nil
	}
	switch pgErr.Code {
	case "3D000": // invalid_catalog_name
		return fmt.Errorf("database %s does not exist: create it (createdb, or make db) and apply the migrations (syncflow migrate up): %w", RedactURL(url), redact.Error(err))
	case "28P01", "28000": // invalid_password, invalid_authorization_specification
		return fmt.Errorf("database %s refuses the credentials: check the user and password of the URL: %w", RedactURL(url), redact.Error(err))
	}
	return nil
}
