package main_test

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/sim"
)

// readmeBlock is a fenced code block of the README.
type readmeBlock struct {
	lang, body string
	line       int
}

func readmeBlocks(t *testing.T) []readmeBlock {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []readmeBlock
	var cur *readmeBlock
	for i, line := range strings.Split(string(data), "\n") {
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &readmeBlock{lang: strings.TrimPrefix(line, "```"), line: i + 1}
		case cur != nil && strings.HasPrefix(line, "```"):
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.body += line + "\n"
		}
	}
	return blocks
}

// shellLines splits a shell snippet into commands: a quote left open or a
// backslash at the end carries a command on to the next line; comments go.
func shellLines(body string) [][]string {
	var out [][]string
	var words []string
	var word strings.Builder
	inWord := false
	var quote rune
	flush := func() {
		if inWord {
			words = append(words, word.String())
			word.Reset()
			inWord = false
		}
	}
	rs := []rune(body)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else if r == '\\' && quote == '"' && i+1 < len(rs) && strings.ContainsRune(`"\$`, rs[i+1]) {
				i++
				word.WriteRune(rs[i])
			} else {
				word.WriteRune(r) // a new line too: an event wrapped inside its quotes
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == '\\' && i+1 < len(rs) && rs[i+1] == '\n':
			i++
		case r == '#' && !inWord:
			for i < len(rs) && rs[i] != '\n' {
				i++
			}
			i--
		case r == '\n':
			flush()
			if len(words) > 0 {
				out = append(out, words)
			}
			words = nil
		case r == ' ' || r == '\t':
			flush()
		default:
			word.WriteRune(r)
			inWord = true
		}
	}
	flush()
	if len(words) > 0 {
		out = append(out, words)
	}
	return out
}

// readmeEvent is an event example: a subject and a body.
type readmeEvent struct {
	subject, body string
	line          int
}

// Every example in the README works: each event it shows is applied or waits for
// its parents (only the one it calls broken is dead-lettered), and each
// `syncflow` command line it shows succeeds, run in order against a service of
// its own.
func TestEveryReadmeExampleWorks(t *testing.T) {
	var events []readmeEvent
	var commands [][]string
	var commandLines []int
	for _, b := range readmeBlocks(t) {
		switch b.lang {
		case "json":
			var ev struct {
				Entity string `json:"entity"`
				Op     string `json:"op"`
			}
			if err := json.Unmarshal([]byte(b.body), &ev); err == nil && ev.Entity != "" && ev.Op != "" {
				events = append(events, readmeEvent{"apismith.cdc." + ev.Entity, b.body, b.line})
			}
		case "sh":
			for _, words := range shellLines(b.body) {
				switch {
				case words[0] == "syncflow":
					commands = append(commands, words[1:])
					commandLines = append(commandLines, b.line)
				case len(words) > 2 && words[0] == "nats" && words[1] == "pub":
					// nats pub [flags] SUBJECT BODY: the subject is the first word
					// that is not a flag or a flag's value.
					var args []string
					for i := 2; i < len(words); i++ {
						switch w := words[i]; {
						case w == "-H" || w == "--count":
							i++
						case strings.HasPrefix(w, "-"):
						default:
							args = append(args, w)
						}
					}
					if len(args) == 2 && !strings.Contains(args[1], "$") {
						body := strings.ReplaceAll(args[1], "{{Count}}", "1")
						events = append(events, readmeEvent{args[0], body, b.line})
					}
				}
			}
		}
	}
	t.Logf("%d events and %d commands from the README", len(events), len(commands))
	if len(events) < 4 || len(commands) < 25 {
		t.Fatalf("found only %d events and %d commands in the README: is the extraction broken?", len(events), len(commands))
	}

	erp := sim.New(sim.Config{Items: 50, Sites: 2})
	src := httptest.NewServer(erp.Handler(sim.ServerConfig{}))
	defer src.Close()
	w := newWorld(t, "SYNCFLOW_APISMITH_URL="+src.URL)
	logs := service(t, w.env, "--fetch-wait", "50ms", "--park-first-retry", "10m")
	for _, ev := range events {
		w.js.Publish(w.ctx, ev.subject, []byte(ev.body))
	}
	// Dead letters of several causes and a parked child, for the commands that
	// name one by UID or fingerprint.
	w.publish("work_orders", workOrder("WO-README", "P-README"))
	w.publish("sites", `{"entity":"sites","op":"upsert","rowversion":"no version","data":{"CONTRACT":"S9"}}`)
	w.publish("work_orders", `{"entity":"work_orders","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"CONTRACT":"S1"}}`)
	w.publish("suppliers", `{"entity":"suppliers","op":"upsert","rowversion":"2026-11-26T08:00:00Z","data":{"ID":"X"}}`)
	eventually(t, w.conn, `SELECT (SELECT count(*) FROM bridge.sync_batches WHERE rows_fetched > 0) > 0 AND
		(SELECT count(*) FROM bridge.pending_children WHERE child_payload->'data'->>'ORDER_NO' = 'WO-README') = 1`, "true", logs)
	time.Sleep(500 * time.Millisecond) // the rest of the events settle
	for _, ev := range events {
		failed := w.query(`SELECT count(*) FROM bridge.failed_records WHERE raw_bytes = '` + strings.ReplaceAll(ev.body, "'", "''") + `'::bytea`)
		broken := !json.Valid([]byte(ev.body))
		switch {
		case broken && failed == "0":
			t.Errorf("README line %d: the broken event %s was not dead-lettered", ev.line, ev.body)
		case !broken && failed != "0":
			t.Errorf("README line %d: the example event on %s was dead-lettered: %s\n%s", ev.line, ev.subject,
				w.query(`SELECT error_message FROM bridge.failed_records WHERE raw_bytes = '`+strings.ReplaceAll(ev.body, "'", "''")+`'::bytea`), ev.body)
		}
	}

	dir := t.TempDir()
	for i, args := range commands {
		args = append([]string(nil), args...)
		stdout := ""
		if n := len(args); n >= 2 && args[n-2] == ">" {
			stdout, args = filepath.Join(dir, args[n-1]), args[:n-2]
		}
		for j, a := range args {
			if j > 0 && args[j-1] == "--fingerprint" && regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(a) {
				// a fingerprint from the groups the README shows first
				list, err := syncflow(t, w.env, "dlq", "list", "--unresolved", "--limit", "1", "--json")
				m := regexp.MustCompile(`"fingerprint": "([0-9a-f]{12})"`).FindStringSubmatch(list)
				if err != nil || m == nil {
					t.Fatalf("no fingerprint to put in README line %d: %v\n%s", commandLines[i], err, list)
				}
				args[j] = m[1]
			}
			if a == "0193..." { // a UID from the listing the README shows first
				table := "bridge.failed_records WHERE resolved_at IS NULL"
				if args[0] == "parked" {
					table = "bridge.pending_children"
				}
				args[j] = w.query(`SELECT uid::text FROM ` + table + ` ORDER BY created_at LIMIT 1`)
			}
		}
		cmd := exec.Command(binary, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), w.env...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// `syncflow run` and a `backfill` without --once run until stopped.
		long := args[0] == "run" || (args[0] == "backfill" && !strings.Contains(strings.Join(args, " "), "--once"))
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		select {
		case err = <-done:
			if long {
				t.Errorf("README line %d: syncflow %s stopped by itself: %v\n%s%s", commandLines[i], strings.Join(args, " "), err, out.String(), errOut.String())
				continue
			}
		case <-time.After(map[bool]time.Duration{true: 2 * time.Second, false: 60 * time.Second}[long]):
			_ = cmd.Process.Signal(syscall.SIGTERM)
			err = <-done
		}
		if exit, ok := err.(*exec.ExitError); ok && args[0] == "verify" && exit.ExitCode() == 4 {
			err = nil // drift found: the README's world has some (its example events are not in the source)
		}
		if err != nil {
			t.Errorf("README line %d: syncflow %s: %v\n%s%s", commandLines[i], strings.Join(args, " "), err, out.String(), errOut.String())
			continue
		}
		if stdout != "" {
			if err := os.WriteFile(stdout, out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
