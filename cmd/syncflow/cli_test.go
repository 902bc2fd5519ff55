package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// Every command accepts its own flags only: each flag of every other command is a
// usage error that names the commands taking it, and nothing runs.
func TestEveryCommandRefusesItsSiblingsFlags(t *testing.T) {
	all := allCommands()
	owners := map[string][]string{} // flag -> the commands that take it
	for _, c := range all {
		for _, name := range flagNames(c) {
			owners[name] = append(owners[name], c.path)
		}
	}
	checked := 0
	for _, c := range all {
		own := flagNames(c)
		for name, takers := range owners {
			if slices.Contains(own, name) {
				continue
			}
			for _, form := range [][]string{{"--" + name, "x"}, {"--" + name + "=x"}} {
				args := append(strings.Fields(c.path), form...)
				p, path, err := prepare(args)
				if p != nil || !errors.Is(err, errUsage) {
					t.Errorf("%v: %v, want a usage error", args, err)
					continue
				}
				if path != c.path {
					t.Errorf("%v: the error is about %q", args, path)
				}
				msg := err.Error()
				if !strings.Contains(msg, "--"+name+" is not a flag of `syncflow "+c.path+"`") {
					t.Errorf("%v: %s", args, msg)
				}
				for _, taker := range takers {
					if !strings.Contains(msg, "`"+taker+"`") {
						t.Errorf("%v: %s: does not name %s", args, msg, taker)
					}
				}
				checked++
			}
		}
	}
	if checked < 500 {
		t.Errorf("only %d command and flag pairs checked", checked)
	}
}

// A flag whose value is an action name does not choose the action, and a flag
// before the action is the chosen action's flag.
func TestActionAmongFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		path string
		err  string
	}{
		{[]string{"dlq", "--entity", "list", "groups"}, "dlq groups", ""},
		{[]string{"dlq", "--note", "why", "resolve", "--all"}, "dlq resolve", ""},
		{[]string{"dlq", "--unresolved", "resolve"}, "dlq resolve", "--unresolved is not a flag of `syncflow dlq resolve`"},
		{[]string{"dlq"}, "dlq", "say what to do: list, groups, show, retry, resolve or purge"},
		{[]string{"dlq", "sideways"}, "dlq", `unknown dlq action "sideways"`},
		{[]string{"streams"}, "streams", "say what to do: apply (see"},
		{[]string{"dlq", "show"}, "dlq show", "needs UID"},
		{[]string{"dlq", "show", "a", "b"}, "dlq show", `the extra argument "b"`},
		{[]string{"dlq", "list", "items"}, "dlq list", `takes no arguments, got "items" (filters are flags, e.g. --entity items`},
		{[]string{"mappings", "import"}, "mappings import", "needs FILE"},
		{[]string{"prune", "stray"}, "prune", `takes no arguments, got "stray" (its settings are flags`},
		{[]string{"status", "--wide", "extra"}, "status", `takes no arguments`},
		{[]string{"version", "now"}, "version", `takes no arguments`},
		{[]string{"frobnicate"}, "frobnicate", `unknown command "frobnicate"`},
		{[]string{"run", "--bogus"}, "run", "unknown flag --bogus"},
		{[]string{"migrate", "force"}, "migrate force", "needs V"},
		{[]string{"dlq", "list", "--reason", "-1 is not", "--stage", "write"}, "dlq list", ""},
		{[]string{"dlq", "resolve", "--note", "--all", "--all"}, "dlq resolve", ""},
	} {
		p, path, err := prepare(tc.args)
		if path != tc.path {
			t.Errorf("%v: chose %q, want %q", tc.args, path, tc.path)
		}
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.err != "" && (err == nil || !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%v: %v, want a usage error with %q", tc.args, err, tc.err)
		case tc.err == "" && p.cmd.path != tc.path:
			t.Errorf("%v: prepared %q", tc.args, p.cmd.path)
		}
	}
}

// An age is positive, in any unit: 0d and -2d would choose everything.
func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{"12h": 12 * time.Hour, "30d": 30 * 24 * time.Hour, "1.5d": 36 * time.Hour, "90s": 90 * time.Second} {
		if got, err := parseAge(in); err != nil || got != want {
			t.Errorf("parseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"0d", "-2d", "0s", "-1h", "d", "90", "soon"} {
		if _, err := parseAge(in); !errors.Is(err, errUsage) {
			t.Errorf("parseAge(%q) = %v, want a usage error", in, err)
		}
	}
}

// A command that deletes by age refuses a bare m (minutes, where months were
// likely meant); a time back from now is never negative (in the future).
func TestRetentionAgeAndSince(t *testing.T) {
	for _, in := range []string{"3m", "90m"} {
		if _, err := parseRetention("--older-than", in); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "m means minutes") {
			t.Errorf("parseRetention(%q) = %v, want a usage error about minutes", in, err)
		}
	}
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "2h": 2 * time.Hour, "1s": time.Second} {
		if got, err := parseRetention("--older-than", in); err != nil || got != want {
			t.Errorf("parseRetention(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	now := time.Now()
	for _, in := range []string{"-5d", "-1h"} {
		if _, err := parseSince(in, now); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "cannot be negative") {
			t.Errorf("parseSince(%q) = %v, want a usage error", in, err)
		}
	}
	if got, err := parseSince("5d", now); err != nil || !got.Equal(now.Add(-5*24*time.Hour)) {
		t.Errorf("parseSince(5d) = %v, %v", got, err)
	}
}
