package store

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/syncflow/syncflow/internal/redact"
)

// RedactURL returns u fit to print (see package redact).
func RedactURL(u string) string { return redact.String(u) }

func redactErr(err error, _ string) string { return redact.String(err.Error()) }

// CheckURL refuses a database URL that does not parse, without quoting it: the
// driver's own message would quote pieces of a password holding an unencoded @,
// # or space.
func CheckURL(u string) error {
	if !strings.Contains(u, "://") {
		return nil // a key/value DSN ("host=... user=..."): the driver parses it
	}
	if _, err := url.Parse(u); err != nil {
		return fmt.Errorf("the database URL %s does not parse: write it as postgres://USER:PASSWORD@HOST:PORT/DB, "+
			"with special characters of the password percent-encoded (@ as %%40, # as %%23, %% as %%25, a space as %%20, / as %%2F)", redact.String(u))
	}
	return nil
}
