package redact_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/syncflow/syncflow/internal/redact"
)

func TestString(t *testing.T) {
	for _, tc := range []struct {
		name, in, secret string
		keep             []string // what must still be there, to be useful
	}{
		{"postgres password", "postgres://bridge_user:s3cretPW@db:5432/x", "s3cretPW", []string{"bridge_user", "db:5432"}},
		{"encoded @ % space #", "postgres://bob:p%40ss%20w%23rd%25@db:5432/x?sslmode=disable", "p%40ss%20w%23rd%25", []string{"bob", "db:5432", "sslmode=disable"}},
		{"in an error", "database postgres://bob:hunter22@db/x is not reachable: EOF", "hunter22", []string{"bob", "is not reachable: EOF"}},
		{"unparseable, @ and space", "postgres://bob:p@ss w#rd1@127.0.0.1:5432/db", "p@ss w#rd1", []string{"127.0.0.1:5432/db"}},
		{"unparseable, bad escape", "postgres://bob:p%ZZss@127.0.0.1:5432/db", "p%ZZss", []string{"127.0.0.1"}},
		{"key/value DSN", "host=db port=5432 user=bob password=s3cret dbname=x", "s3cret", []string{"user=bob", "dbname=x"}},
		{"quoted DSN value", "host=db password='a b c' user=bob", "'a b c'", []string{"user=bob"}},
		{"query password", "postgres://bob@db/x?password=qpw123&sslmode=require", "qpw123", []string{"sslmode=require"}},
		{"nats user and password", "nats at nats://bob:s3cretNATS@127.0.0.1:1: no servers", "s3cretNATS", []string{"bob", "127.0.0.1:1", "no servers"}},
		{"nats token", "nats://tok3nSECRET@127.0.0.1:4222", "tok3nSECRET", []string{"127.0.0.1:4222"}},
		{"several nats URLs", "nats://a:pw1xyz@h1:4222,nats://a:pw2xyz@h2:4222", "pw1xyz", []string{"h1:4222", "h2:4222"}},
		{"short password", "postgres://bob:p@db/postgres", "bob:p@", []string{"postgres", "db"}},
		{"DSN password with a comma", "host=127.0.0.1 user=bob password=Longsecret,Tail99 dbname=x", "Tail99", []string{"user=bob", "dbname=x"}},
		{"DSN password with a semicolon", "host=127.0.0.1 password=Longsecret;Tail99", "Tail99", []string{"host=127.0.0.1"}},
		{"DSN password with a quote", "host=127.0.0.1 password=Longsecret'Tail99 user=bob", "Tail99", []string{"user=bob"}},
		{"DSN quoted password with escaped quotes", `host=127.0.0.1 password='abc\'def ghi\'jkl' dbname=x`, "ghi", []string{"host=127.0.0.1", "dbname=x"}},
		{"DSN password with escaped spaces", `host=127.0.0.1 password=Top\ Secret\ Words user=bob`, "Secret", []string{"user=bob"}},
		{"DSN password with escaped spaces, the last words", `host=127.0.0.1 password=Top\ Secret\ Words user=bob`, "Words", []string{"user=bob"}},
		{"DSN password ending in a backslash", `password=abc\ dbname=x`, "abc", nil},
		{"DSN quoted password never closed", `host=db password='abc def`, "def", []string{"host=db"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := redact.String(tc.in)
			if strings.Contains(got, tc.secret) {
				t.Errorf("%q\n -> %q still holds %q", tc.in, got, tc.secret)
			}
			for _, k := range tc.keep {
				if !strings.Contains(got, k) {
					t.Errorf("%q\n -> %q lost %q", tc.in, got, k)
				}
			}
		})
	}
}

// The secrets of a URL or DSN given to the process are registered whole, whatever
// they hold: a comma in a NATS password (which the URL list is split on) or an &
// in a DSN password (where a URL query would end), and masked in any message.
func TestAddURLTakesWholeSecrets(t *testing.T) {
	redact.AddURL("nats://natsu:Longsecret,Tail99@127.0.0.1:16399")
	redact.AddURL("host=127.0.0.1 user=bob password=Amp3rsand&Tail77")
	redact.AddURL(`host=127.0.0.1 user=bob password='Quo\'tedEsc4pe spaced'`)
	for _, msg := range []string{
		"the NATS URL nats://natsu:Longsecret does not parse",
		"stray Tail99@127.0.0.1:16399",
		"database host=127.0.0.1 password=Amp3rsand&Tail77 is not reachable",
		"authentication failed for the password Quo'tedEsc4pe spaced",
	} {
		got := redact.String(msg)
		for _, secret := range []string{"Longsecret", "Tail99", "Amp3rsand", "Tail77", "Quo'tedEsc4pe", "tedEsc4pe"} {
			if strings.Contains(got, secret) {
				t.Errorf("%q -> %q still holds %q", msg, got, secret)
			}
		}
	}
}

// A registered secret is masked in every spelling, wherever it appears; a short one
// only where it stands alone, so that the text around it stays readable.
func TestRegisteredSecrets(t *testing.T) {
	redact.AddURL("postgres://bob:p@ss w#rd1@127.0.0.1:5432/db")
	redact.Add(`q"uo\te`, "p")
	for _, in := range []string{
		"cannot parse `postgres://bob:xxxxx@ss w#rd1@127.0.0.1:5432/db`: failed to parse as URL (unexpected spaces found in \"ss w#rd1@127.0.0.1\")",
		`parse "postgres://bob:p@ss w": invalid character " " in host name`,
		`{"err":"password is q\"uo\\te"}`,
		"the password p@ss%20w%23rd1 leaked",
	} {
		got := redact.String(in)
		for _, bad := range []string{"p@ss w#rd1", "ss w#rd1", "w#rd1", `q\"uo\\te`, "p%40ss", "ss%20w"} {
			if strings.Contains(got, bad) {
				t.Errorf("%q\n -> %q still holds %q", in, got, bad)
			}
		}
	}
	if got := redact.String("failed to open database postgres: user=postgres lookup p"); got != "failed to open database postgres: user=postgres lookup xxxxx" {
		t.Errorf("a one-letter password mangled the text: %q", got)
	}
}

func TestError(t *testing.T) {
	base := errors.New("connect postgres://u:Secret99@h/x failed")
	err := redact.Error(fmt.Errorf("wrapped: %w", base))
	if strings.Contains(err.Error(), "Secret99") || !errors.Is(err, base) {
		t.Errorf("%v (is: %v)", err, errors.Is(err, base))
	}
	if redact.Error(nil) != nil {
		t.Error("nil error")
	}
}

// A user name without a password is no secret: "postgres://postgres@host" keeps
// its scheme and its user; a NATS URL's lone user part is a token, masked.
func TestUserNameAloneIsNoSecret(t *testing.T) {
	redact.AddURL("postgres://reporting@127.0.0.1:5432/syncflow,nats://t0kenValue@127.0.0.1:4222")
	got := redact.String("database postgres://reporting@127.0.0.1:5432/syncflow and nats://t0kenValue@127.0.0.1:4222")
	if want := "database postgres://reporting@127.0.0.1:5432/syncflow and nats://xxxxx@127.0.0.1:4222"; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
