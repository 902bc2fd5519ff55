// Package redact keeps secrets out of everything SyncFlow prints: logs, errors and
// command output. String is the one function every such path goes through.
//
// It masks, wherever they appear in a text:
//   - the password of a URL (postgres://user:PASSWORD@host), and a NATS token
//     (nats://TOKEN@host), working on the parsed URL;
//   - the whole user part of a URL that does not parse (a password with an
//     unencoded @, # or space breaks parsing, and the pieces would leak);
//   - key=value secrets (password=, sslpassword=, token=, as in a key/value DSN
//     or a URL query);
//   - every secret registered with Add or AddURL (the passwords and tokens the
//     process was given), in every spelling it may take in an error message:
//     as given, percent-encoded, percent-decoded and JSON-escaped.
//
// Masking errs on the side of hiding too much: a URL's user name may go with its
// password when the URL does not parse.
//
// It imports nothing of SyncFlow, so every floor may use it.
package redact

import (
	"encoding/json"
	"errors"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Mask replaces every secret.
const Mask = "xxxxx"

var (
	mu      sync.RWMutex
	secrets []string // longest first, so that a secret containing another goes first
)

// Add registers secrets that must never be printed (a password given by flag, a
// token). Empty strings are ignored.
func Add(ss ...string) {
	mu.Lock()
	defer mu.Unlock()
	for _, s := range ss {
		for _, v := range spellings(s) {
			if v != "" && !slices.Contains(secrets, v) {
				secrets = append(secrets, v)
			}
		}
	}
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
}

// AddURL registers the secrets of a URL (or a comma-separated list of URLs, or a
// key/value DSN): its password, a NATS token, secret query parameters. It works
// on URLs that do not parse too, taking the user part as a whole.
func AddURL(raw string) {
	// The user part of every URL in the text first, whole: a password may hold
	// a comma, which would otherwise cut it in two below.
	for _, ui := range userinfos(raw) {
		secret := ui.userinfo
		if _, pw, ok := strings.Cut(ui.userinfo, ":"); ok {
			secret = pw
		} else if !tokenScheme(ui.scheme) {
			continue // a user name alone is no secret, but for a NATS token
		}
		Add(withPieces(secret)...)
	}
	for _, one := range strings.Split(raw, ",") {
		Add(urlSecrets(strings.TrimSpace(one))...)
	}
}

// userinfo is the user part of a URL, with the URL's scheme.
type userinfo struct{ scheme, userinfo string }

// userinfos returns the user part of every URL in raw: what lies between its
// "://" and the last @ before the next URL's scheme (or the end).
func userinfos(raw string) []userinfo {
	locs := schemeRE.FindAllStringIndex(raw, -1)
	var out []userinfo
	for i, loc := range locs {
		end := len(raw)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		if at := strings.LastIndex(raw[loc[1]:end], "@"); at > 0 {
			out = append(out, userinfo{scheme: strings.TrimSuffix(raw[loc[0]:loc[1]], "://"), userinfo: raw[loc[1] : loc[1]+at]})
		}
	}
	return out
}

// spellings returns s as it may appear in a message.
func spellings(s string) []string {
	if s == "" {
		return nil
	}
	out := []string{s, url.QueryEscape(s), url.PathEscape(s), strings.ReplaceAll(url.QueryEscape(s), "+", "%20")}
	if d, err := url.PathUnescape(s); err == nil {
		out = append(out, d)
	}
	if j, err := json.Marshal(s); err == nil {
		out = append(out, string(j[1:len(j)-1]))
	}
	return out
}

var (
	// schemeRE finds where a URL starts inside a text.
	schemeRE = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.\-]*://`)
	// kvRE finds key=value secrets (a DSN, a URL query, a log line).
	// An unquoted value runs to white space or the & of a URL query: a password
	// may hold , ; or a quote. A backslash escapes the next character, quoted or
	// not, as in a DSN (password='it\'s' or password=two\ words).
	kvRE = regexp.MustCompile(`(?i)\b((?:ssl)?password|passwd|pwd|token|auth_token|secret|nkey|jwt)(\s*[=:]\s*)('(?:\\.|[^'\\])*'?|"(?:\\.|[^"\\])*"?|(?:\\.|[^\s&])+)`)
	// kvDSNRE reads the values of a key/value DSN the process was given, as libpq
	// does: an unquoted value runs to white space, & included.
	kvDSNRE = regexp.MustCompile(`(?i)\b((?:ssl)?password|passwd|pwd|token|auth_token|secret|nkey|jwt)(\s*[=:]\s*)('(?:\\.|[^'\\])*'?|"(?:\\.|[^"\\])*"?|(?:\\.|\S)+)`)
	// escapeRE is a backslash escape in a DSN value.
	escapeRE = regexp.MustCompile(`\\(.)`)
)

func urlSecrets(raw string) []string {
	var out []string
	for _, re := range []*regexp.Regexp{kvRE, kvDSNRE} {
		for _, m := range re.FindAllStringSubmatch(raw, -1) {
			v := strings.Trim(m[3], `'"`)
			// As written, and as the driver reads it (escapes undone).
			out = append(out, withPieces(v)...)
			out = append(out, withPieces(escapeRE.ReplaceAllString(v, "$1"))...)
		}
	}
	i := strings.Index(raw, "://")
	if i < 0 {
		return out
	}
	rest := raw[i+3:]
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			out = append(out, withPieces(pw)...)
		} else if tokenScheme(u.Scheme) {
			out = append(out, withPieces(u.User.Username())...)
		}
		// The raw spelling too: "p%40ss" as well as "p@ss".
		if at := strings.LastIndex(rest[:hostEnd(rest)], "@"); at >= 0 {
			if _, pw, ok := strings.Cut(rest[:at], ":"); ok {
				out = append(out, withPieces(pw)...)
			}
		}
		return out
	}
	// Unparseable: the user part is everything up to the last @; its password is
	// after the first colon.
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return out
	}
	userinfo := rest[:at]
	secret := userinfo
	if _, pw, ok := strings.Cut(userinfo, ":"); ok {
		secret = pw
	}
	return append(out, withPieces(secret)...)
}

// withPieces returns a secret and the pieces of it that a parser may quote on
// their own: what follows an @ it took for the end of the user part, and the
// parts between @, #, / and white space.
func withPieces(secret string) []string {
	out := []string{secret}
	for i, r := range secret {
		if r == '@' || r == '#' || unicode.IsSpace(r) {
			if tail := secret[i+1:]; len(tail) >= 3 {
				out = append(out, tail)
			}
		}
	}
	for _, piece := range strings.FieldsFunc(secret, func(r rune) bool {
		return r == '@' || r == '#' || r == '/' || r == '?' || r == ',' || r == ';' || r == '&' || r == '\'' || unicode.IsSpace(r)
	}) {
		if len(piece) >= 3 {
			out = append(out, piece)
		}
	}
	return out
}

// hostEnd returns where the authority of rest (a URL after "scheme://") ends.
func hostEnd(rest string) int {
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		// A password may hold /, ? or #: the authority ends at the first of them
		// after the last @ before it.
		if at := strings.LastIndex(rest, "@"); at > i {
			if j := strings.IndexAny(rest[at:], "/?#"); j >= 0 {
				return at + j
			}
			return len(rest)
		}
		return i
	}
	return len(rest)
}

func tokenScheme(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "nats", "tls", "ws", "wss":
		return true
	}
	return false
}

// String returns s with every secret masked: the passwords and tokens of the URLs
// in it, key=value secrets, and the registered secrets. Use it on every URL and
// every error text before printing it.
func String(s string) string {
	s = maskURLs(s)
	s = kvRE.ReplaceAllString(s, "${1}${2}"+Mask)
	mu.RLock()
	defer mu.RUnlock()
	for _, secret := range secrets {
		s = maskSecret(s, secret)
	}
	return s
}

// Error returns err with its text redacted; errors.Is and errors.As still see
// the original.
func Error(err error) error {
	if err == nil {
		return nil
	}
	return &redacted{err: err, msg: String(err.Error())}
}

type redacted struct {
	err error
	msg string
}

func (r *redacted) Error() string { return r.msg }
func (r *redacted) Unwrap() error { return r.err }

// Is lets errors.Is see through to the wrapped error.
func (r *redacted) Is(target error) bool { return errors.Is(r.err, target) }

// maskURLs masks the user part of every URL in s.
func maskURLs(s string) string {
	locs := schemeRE.FindAllStringIndex(s, -1)
	if locs == nil {
		return s
	}
	var b strings.Builder
	prev := 0
	for i, loc := range locs {
		if loc[0] < prev {
			continue
		}
		end := len(s)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		// A URL in prose ends at white space, a quote or a closing bracket, unless a
		// later @ shows the white space was inside its password.
		body := s[loc[1]:end]
		stop := strings.IndexFunc(body, func(r rune) bool { return unicode.IsSpace(r) || strings.ContainsRune("`'\"<>)]", r) })
		if stop < 0 {
			stop = len(body)
		}
		if at := strings.LastIndex(body, "@"); at > stop && passwordLike(body[stop:at]) {
			if next := strings.IndexFunc(body[at:], func(r rune) bool { return unicode.IsSpace(r) || strings.ContainsRune("`'\"<>)]", r) }); next >= 0 {
				stop = at + next
			} else {
				stop = len(body)
			}
		}
		// Trailing punctuation belongs to the prose (or to a list of URLs).
		for stop > 0 && strings.ContainsRune(",;.:", rune(body[stop-1])) {
			stop--
		}
		b.WriteString(s[prev:loc[0]])
		b.WriteString(maskURL(s[loc[0] : loc[1]+stop]))
		prev = loc[1] + stop
	}
	b.WriteString(s[prev:])
	return b.String()
}

// passwordLike reports whether s, the text between a URL's first white space and
// a later @, can be the rest of a password (a few words at most), rather than
// prose that happens to mention an @.
func passwordLike(s string) bool {
	return len(strings.Fields(s)) <= 3 && !strings.ContainsAny(s, "(),;")
}

// maskURL masks one URL: on the parsed URL when it parses, on its text otherwise.
func maskURL(raw string) string {
	u, err := url.Parse(raw)
	if err == nil && !strings.Contains(u.Host, "@") {
		changed := false
		if u.User != nil {
			if _, ok := u.User.Password(); ok {
				u.User, changed = url.UserPassword(u.User.Username(), Mask), true
			} else if tokenScheme(u.Scheme) {
				u.User, changed = url.User(Mask), true
			}
		}
		q := u.Query()
		for k := range q {
			if kvRE.MatchString(k + "=x") {
				q.Set(k, Mask)
				changed = true
			}
		}
		if !changed {
			return raw
		}
		if len(q) > 0 {
			u.RawQuery = q.Encode()
		}
		return strings.Replace(u.String(), url.QueryEscape(Mask), Mask, -1)
	}
	// It does not parse: never echo its user part.
	i := strings.Index(raw, "://")
	rest := raw[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw
	}
	return raw[:i+3] + Mask + rest[at:]
}

// maskSecret replaces secret in s. A short secret (a few characters) is only
// replaced where it stands as a word of its own, so that a password "p" does not
// turn "postgres" into "xxxxxostgres".
func maskSecret(s, secret string) string {
	if utf8.RuneCountInString(secret) >= 6 {
		return strings.ReplaceAll(s, secret, Mask)
	}
	var b strings.Builder
	for {
		i := strings.Index(s, secret)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		before, _ := utf8.DecodeLastRuneInString(s[:i])
		after, _ := utf8.DecodeRuneInString(s[i+len(secret):])
		if i > 0 && word(before) || i+len(secret) < len(s) && word(after) {
			b.WriteString(s[:i+len(secret)])
		} else {
			b.WriteString(s[:i])
			b.WriteString(Mask)
		}
		s = s[i+len(secret):]
	}
}

func word(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' }
