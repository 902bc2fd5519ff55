package main_test

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/testenv"
)

// The secrets of TestNoCommandPrintsASecret: passwords with @, space, # and %.
const (
	dbPassword       = "Zq9xK@Pw3v #r%Tv8"
	natsPassword     = "Nq7xW@Ys5h #p%Yh2"
	natsToken        = "TkN8vQ2pL5wR"
	apismithToken    = "ApT0k3nZx9mB"
	apismithPassword = "ApiPw7Qz"
)

// secretForms returns every spelling of the secrets that must not appear: as
// given, percent-encoded, and the pieces an @, a space or a # cut them into.
func secretForms() []string {
	var out []string
	for _, s := range []string{dbPassword, natsPassword, natsToken, apismithToken, apismithPassword} {
		out = append(out, s, url.QueryEscape(s), url.PathEscape(s), url.UserPassword("u", s).String())
		for _, piece := range strings.FieldsFunc(s, func(r rune) bool { return r == '@' || r == ' ' || r == '#' }) {
			if len(piece) >= 4 {
				out = append(out, piece)
			}
		}
	}
	return out
}

// commandPaths asks the binary for its commands and their actions.
func commandPaths(t *testing.T) []string {
	t.Helper()
	out, err := syncflow(t, nil, "--help")
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	var paths []string
	names := regexp.MustCompile(`(?m)^  ([a-z]+) `).FindAllStringSubmatch(out[strings.Index(out, "Commands:"):], -1)
	for _, m := range names {
		help, _ := syncflow(t, nil, m[1], "--help")
		if !strings.HasPrefix(help, "Usage: syncflow "+m[1]+" ACTION") {
			paths = append(paths, m[1])
			continue
		}
		for _, a := range regexp.MustCompile(`(?m)^  ([a-z]+)`).FindAllStringSubmatch(help[strings.Index(help, "Actions:"):], -1) {
			paths = append(paths, m[1]+" "+a[1])
		}
	}
	if len(paths) < 25 {
		t.Fatalf("only %d commands found: %v", len(paths), paths)
	}
	return paths
}

// Every command, given password-bearing database and NATS URLs that fail in
// every way (a host that does not resolve, a closed port, a user the server
// refuses, a URL that does not parse), prints no secret: not on stdout, not on
// stderr, not in its logs (at debug level, as text and as JSON).
func TestNoCommandPrintsASecret(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "rules.csv")
	os.WriteFile(rules, []byte("entity_name,source_field,target_field,transformation,default_value,is_required\nsites,DESCRIPTION,description,trim,,false\n"), 0o644)
	// Just enough for each command to get past its own checks to the connection.
	extra := map[string][]string{
		"run":             {"--http-addr", "127.0.0.1:0", "--lease-wait", "0s"},
		"migrate down":    {"--yes"},
		"migrate force":   {"1"},
		"mappings import": {rules},
		"dlq show":        {"0190d6a0-0000-7000-8000-000000000000"},
		"dlq retry":       {"--all"},
		"dlq resolve":     {"--all", "--note", "test"},
		"dlq purge":       {"--resolved", "--all"},
		"parked release":  {"--all"},
		"parked expire":   {"--all"},
		"replay":          {"--entity", "sites", "--since", "1h"},
		"schedule set":    {"sites", "--days", "3"},
		"schedule enable": {"sites"}, "schedule disable": {"sites"}, "schedule reset": {"sites"},
		"prune": {"--older-than", "1d", "--tombstones-older-than", "3650d"},
	}
	// Properly encoded (%40 %20 %23 %25), with the @ left raw, and not encoded at all.
	enc, half := url.UserPassword("bob", dbPassword).String(), "bob:"+url.PathEscape(dbPassword)
	dbURLs := []string{
		"postgres://" + enc + "@nohost.invalid:5432/syncflow?connect_timeout=2",
		"postgres://" + enc + "@127.0.0.1:1/syncflow?connect_timeout=2",
		"postgres://" + url.UserPassword("nobody_at_all", dbPassword).String() + "@127.0.0.1:5432/postgres?sslmode=disable&connect_timeout=2",
		"postgres://" + half + "@127.0.0.1:1/syncflow",
		"postgres://bob:" + dbPassword + "@127.0.0.1:5432/syncflow",
		"host=127.0.0.1 port=1 user=bob password='" + dbPassword + "' connect_timeout=2",
	}
	nenc := url.UserPassword("natsu", natsPassword).String()
	natsURLs := []string{
		"nats://" + nenc + "@127.0.0.1:1",
		"nats://" + natsToken + "@127.0.0.1:1",
		"nats://natsu:" + natsPassword + "@127.0.0.1:1",
		"nats://natsu:" + url.PathEscape(natsPassword) + "@127.0.0.1:1",
		"nats://" + nenc + "@nohost.invalid:4222",
	}
	// A database that works, for the commands that get as far as NATS.
	good, drop, err := testenv.NewMigratedDatabase(context.Background(), "e2e_secrets")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	forms := secretForms()
	check := func(path string, env []string, args []string, wantFail bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, binary, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		for _, f := range forms {
			if strings.Contains(string(out), f) {
				t.Errorf("syncflow %s printed %q:\n%s", strings.Join(args, " "), f, out)
				return
			}
		}
		if wantFail && err == nil {
			t.Errorf("syncflow %s succeeded with a broken URL: the test did not reach the failure:\n%s", strings.Join(args, " "), out)
		}
	}
	common := []string{
		"SYNCFLOW_NATS_PASSWORD=" + natsPassword, "SYNCFLOW_NATS_TOKEN=" + natsToken,
		"SYNCFLOW_APISMITH_TOKEN=" + apismithToken, "SYNCFLOW_APISMITH_URL=http://api:" + apismithPassword + "@127.0.0.1:1",
		"SYNCFLOW_LOG_LEVEL=debug",
	}
	runs := 0
	for i, path := range commandPaths(t) {
		args := append(strings.Fields(path), extra[path]...)
		help, _ := syncflow(t, nil, append(strings.Fields(path), "--help")...)
		usesDB, usesNATS := strings.Contains(help, "-database-url"), strings.Contains(help, "-nats-url")
		for j, db := range dbURLs {
			format := []string{"json", "text"}[(i+j)%2]
			env := append([]string{"SYNCFLOW_DATABASE_URL=" + db, "SYNCFLOW_NATS_URL=" + natsURLs[(i+j)%len(natsURLs)], "SYNCFLOW_LOG_FORMAT=" + format}, common...)
			check(path, env, args, usesDB)
			runs++
		}
		if usesNATS {
			for j, n := range natsURLs {
				format := []string{"json", "text"}[j%2]
				env := append([]string{"SYNCFLOW_DATABASE_URL=" + good.URL, "SYNCFLOW_NATS_URL=" + n, "SYNCFLOW_LOG_FORMAT=" + format}, common...)
				// status reports NATS trouble and carries on; the rest fail.
				check(path, env, args, path != "status")
				// The secrets given as flags instead.
				check(path, []string{"SYNCFLOW_DATABASE_URL=" + good.URL, "SYNCFLOW_LOG_FORMAT=" + format},
					append(slicesClone(args), "--nats-url", n, "--nats-user", "natsu", "--nats-password", natsPassword, "--log-level", "debug"), path != "status")
				runs += 2
			}
		}
	}
	t.Logf("%d runs", runs)
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// `make run DATABASE_URL=...` shows no password: not in the commands make echoes,
// not in what they print when the database is not there or the URL is malformed.
func TestMakeRunShowsNoPassword(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is needed: it is how the README starts SyncFlow")
	}
	forms := secretForms()
	for _, db := range []string{
		"postgres://" + url.UserPassword("bob", dbPassword).String() + "@127.0.0.1:1/syncflow_x?sslmode=disable",
		"postgres://bob:" + dbPassword + "@127.0.0.1:1/syncflow_x",
	} {
		for _, args := range [][]string{{"-n", "run"}, {"db"}} {
			cmd := exec.Command("make", append([]string{"-C", "../..", "DATABASE_URL=" + db, "ADMIN_URL=" + db}, args...)...)
			out, _ := cmd.CombinedOutput()
			for _, f := range forms {
				if strings.Contains(string(out), f) {
					t.Errorf("make %v printed %q:\n%s", args, f, out)
				}
			}
			if args[0] == "db" && !strings.Contains(string(out), "demodb:") {
				t.Errorf("make db did not get as far as the database:\n%s", out)
			}
		}
	}
}
