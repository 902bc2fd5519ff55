// Package layers_test holds the house rules of the module's imports, checked with
// `go list -deps` so that they cannot erode:
//
//	4  cmd/...                      wiring and the command line
//	3  consumer, service            the loop, and building and running it
//	2  store | stream               the adapters: PostgreSQL | JetStream, side by side
//	1  the core                     event, catalog, normalize, mapping, pipeline,
//	                                apply, deadletter, backfill (and redact)
//
// No arrow runs up, the adapters do not import each other, and neither pgx nor
// nats.go (nor the metrics or log libraries) is reachable from the core.
package layers_test

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/syncflow/syncflow/"

var (
	// core is in floor order: each of the first seven reaches only those before it.
	core     = []string{"internal/event", "internal/catalog", "internal/normalize", "internal/mapping", "internal/pipeline", "internal/apply", "internal/deadletter", "internal/backfill", "internal/redact"}
	adapters = []string{"internal/store", "internal/stream"}
	// embedded holds the files the adapters embed: SQL migrations, stream and catalog definitions.
	embedded = []string{"migrations", "streams"}
	// infrastructure no core package may reach.
	forbiddenInCore = []string{"github.com/jackc/", "github.com/nats-io/", "github.com/golang-migrate/", "github.com/prometheus/", "github.com/lmittmann/tint", "net/http"}
)

// rules says, for each package, which of the module's packages it may reach
// (directly or through others), and which outside paths it must not.
var rules = map[string]struct {
	may       [][]string
	forbidden []string
}{
	"internal/event":      {may: [][]string{{"internal/event"}}, forbidden: forbiddenInCore},
	"internal/redact":     {may: [][]string{{"internal/redact"}}, forbidden: forbiddenInCore},
	"internal/catalog":    {may: [][]string{core[:2]}, forbidden: forbiddenInCore},
	"internal/normalize":  {may: [][]string{core[:3]}, forbidden: forbiddenInCore},
	"internal/mapping":    {may: [][]string{core[:4]}, forbidden: forbiddenInCore},
	"internal/pipeline":   {may: [][]string{core[:5]}, forbidden: forbiddenInCore},
	"internal/apply":      {may: [][]string{core[:6]}, forbidden: forbiddenInCore},
	"internal/deadletter": {may: [][]string{core[:7]}, forbidden: forbiddenInCore},
	// The backfill reads APISmith over HTTP: its policy is core, its client the
	// one piece of I/O it owns; the database and JetStream stay behind interfaces.
	"internal/backfill":  {may: [][]string{{"internal/event", "internal/catalog", "internal/redact", "internal/backfill"}}, forbidden: slices.DeleteFunc(slices.Clone(forbiddenInCore), func(s string) bool { return s == "net/http" })},
	"internal/store":     {may: [][]string{core, embedded, {"internal/store"}}},
	"internal/stream":    {may: [][]string{core, {"internal/stream"}}},
	"internal/memlimit":  {may: [][]string{{"internal/memlimit"}}, forbidden: forbiddenInCore},
	"internal/telemetry": {may: [][]string{{"internal/telemetry", "internal/redact"}}, forbidden: []string{"github.com/jackc/", "github.com/nats-io/"}},
	"internal/consumer":  {may: [][]string{core, adapters, embedded, {"internal/consumer", "internal/telemetry"}}},
	"internal/service":   {may: [][]string{core, adapters, embedded, {"internal/consumer", "internal/service", "internal/telemetry"}}},
	"internal/sim":       {may: [][]string{{"internal/sim"}}},
	// The in-memory store the core's tests run on: core only, no driver.
	"internal/storetest": {may: [][]string{core, embedded, {"internal/storetest"}}, forbidden: forbiddenInCore},
}

type pkg struct {
	ImportPath string
	Deps       []string
	Imports    []string
}

func list(t *testing.T, patterns ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-deps=false", "-json"}, patterns...)...)
	cmd.Dir = "../.."
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(&out)
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func TestImportRules(t *testing.T) {
	pkgs := list(t, "./...")
	seen := map[string]bool{}
	for _, p := range pkgs {
		name := strings.TrimPrefix(p.ImportPath, module)
		seen[name] = true
		if strings.HasPrefix(name, "internal/testenv") || strings.HasPrefix(name, "internal/layers") {
			continue
		}
		for _, dep := range p.Deps {
			// The benchmark creates its databases and brokers as the tests do.
			if dep == module+"internal/testenv" && name != "cmd/syncflow-bench" {
				t.Errorf("%s imports internal/testenv, which is for tests only", name)
			}
			if dep == module+"internal/storetest" {
				t.Errorf("%s imports internal/storetest, which is for tests only", name)
			}
		}
		r, ok := rules[name]
		if !ok {
			if strings.HasPrefix(name, "internal/") {
				t.Errorf("%s has no import rule: add it to the house rules in this file", name)
			}
			continue
		}
		for _, dep := range p.Deps {
			if own, ok := strings.CutPrefix(dep, module); ok {
				if !slices.ContainsFunc(r.may, func(allowed []string) bool { return slices.Contains(allowed, own) }) {
					t.Errorf("%s reaches %s: that arrow runs up or sideways (see the floors in this file)", name, own)
				}
				continue
			}
			for _, f := range r.forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s reaches %s, which the core must not", name, dep)
				}
			}
		}
	}
	for name := range rules {
		if !seen[name] {
			t.Errorf("the rule for %s names a package that does not exist", name)
		}
	}
}
