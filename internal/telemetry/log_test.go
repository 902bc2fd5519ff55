package telemetry_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/telemetry"
)

// Durations read as people write them, in JSON as in text; secrets never appear.
func TestLoggerDurationsAndSecrets(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var buf bytes.Buffer
		log, _, err := telemetry.NewLogger(&buf, format, "info")
		if err != nil {
			t.Fatal(err)
		}
		log.Warn("batch held", "retry_in", 4500*time.Millisecond, "took", 82976037*time.Nanosecond, "backoff", 1254459211*time.Nanosecond,
			"err", errors.New("dial postgres://bob:Hunter2Secret@db:5432/x: refused"),
			"url", "nats://tok3nSecret@nats:4222")
		out := buf.String()
		if !strings.Contains(out, "4.5s") || strings.Contains(out, "4500000000") {
			t.Errorf("%s: duration not human-readable:\n%s", format, out)
		}
		if !strings.Contains(out, "83ms") || !strings.Contains(out, "1.3s") || strings.Contains(out, "82.976") {
			t.Errorf("%s: durations not rounded as people read them:\n%s", format, out)
		}
		for _, secret := range []string{"Hunter2Secret", "tok3nSecret"} {
			if strings.Contains(out, secret) {
				t.Errorf("%s: %s leaked:\n%s", format, secret, out)
			}
		}
		if !strings.Contains(out, "bob") || !strings.Contains(out, "db:5432") {
			t.Errorf("%s: redaction hid too much:\n%s", format, out)
		}
	}
}
