package main_test

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/syncflow/syncflow/internal/testenv"
)

// TestRunLimitsItsMemory reads the runtime's soft memory limit off a running
// service's /metrics: --memory-limit's default, a value given, 0 for none, and
// a GOMEMLIMIT in the environment, which wins over the flag.
func TestRunLimitsItsMemory(t *testing.T) {
	// The limits of the environment the tests run in are not the cases'.
	for _, name := range []string{"GOMEMLIMIT", "SYNCFLOW_MEMORY_LIMIT"} {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
	srv := testenv.NATS(t)
	env := []string{"SYNCFLOW_DATABASE_URL=" + dbURL, "SYNCFLOW_NATS_URL=" + srv.ClientURL(), "SYNCFLOW_LOG_FORMAT=json"}
	if out, err := syncflow(t, env, "streams", "apply"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	addr := regexp.MustCompile(`"msg":"serving /metrics, /healthz and /readyz","addr":"([^"]+)"`)
	for i, c := range []struct {
		env  []string
		args []string
		want string
		log  string
	}{
		{want: "4.6137344e+07", log: `"msg":"memory limit","floor":"44MiB"`}, // 44MiB
		{args: []string{"--memory-limit", "1GiB"}, want: "1.073741824e+09"},
		{args: []string{"--memory-limit", "0"}, want: "9.223372036854776e+18", log: `"msg":"memory limit: none (--memory-limit 0)"`}, // the runtime's default: none
		{env: []string{"GOMEMLIMIT=100MiB"}, args: []string{"--memory-limit", "1GiB"}, want: "1.048576e+08", log: `"msg":"memory limit: GOMEMLIMIT from the environment, kept as it is; --memory-limit not applied","GOMEMLIMIT":"100MiB"`},
		// GOMEMLIMIT=0 is a limit of nothing, not no limit: a warning says so.
		{env: []string{"GOMEMLIMIT=0"}, want: "0", log: `"level":"WARN","msg":"memory limit: GOMEMLIMIT from the environment is very low, and the collector will run nearly all the time; GOMEMLIMIT=off is no limit, and without GOMEMLIMIT --memory-limit applies","GOMEMLIMIT":"0","limit":"0B"`},
	} {
		logs := service(t, append(append(env, c.env...), "SYNCFLOW_REPLICA=memory"+string(rune('a'+i))), c.args...)
		waitForLog(t, logs, "syncflow running")
		m := addr.FindStringSubmatch(logs.String())
		if m == nil {
			t.Fatalf("case %d: no metrics address in\n%s", i, logs)
		}
		resp, err := http.Get("http://" + m[1] + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := "go_gc_gomemlimit_bytes " + c.want + "\n"
		if !strings.Contains(string(body), want) {
			got := regexp.MustCompile(`(?m)^go_gc_gomemlimit_bytes .*`).FindString(string(body))
			t.Errorf("case %d (%v %v): want %q, got %q", i, c.env, c.args, want, got)
		}
		if c.log != "" && !strings.Contains(logs.String(), c.log) {
			t.Errorf("case %d: want %s in\n%s", i, c.log, logs)
		}
	}

	for arg, want := range map[string]string{
		"44M": "not a size: use e.g. 44MiB, 512MiB or 1GiB (0: no limit)",
		"512": "512 bytes is less than 1MiB: write a unit, e.g. 512MiB (0: no limit)",
	} {
		out, err := syncflow(t, nil, "run", "--memory-limit", arg)
		if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 2 || !strings.Contains(out, want) {
			t.Errorf("--memory-limit %s: %v\n%s", arg, err, out)
		}
	}
}
