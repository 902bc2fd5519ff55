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
	// An @ in the user part must be encoded: the driver would split the URL at the
	// first one and look the rest of the password up as a host name.
	authority := u[strings.Index(u, "://")+3:]
	if i := strings.IndexAny(authority, "/?"); i >= 0 && strings.LastIndex(authority, "@") < i {
		authority = authority[:i]
	}
	if _, err := url.Parse(u); err != nil || strings.Count(authority, "@") > 1 {
		return fmt.Errorf("the database URL %s does not parse: percent-encode the special characters of the user name and password "+
			"(@ as %%40, # as %%23, %% as %%25, a space as %%20, / as %%2F, : as %%3A)", redact.String(u))
	}
	return nil
}
