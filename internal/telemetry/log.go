// Package telemetry sets up logging: tint's colored text on a terminal, JSON
// otherwise, at a level that can change at run time.
package telemetry

import (
	"cmp"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/lmittmann/tint"
	"golang.org/x/term"

	"github.com/syncflow/syncflow/internal/redact"
)

// NewLogger returns a logger writing to w. format is auto (text on a terminal, JSON
// otherwise), text or json; level is debug, info, warn or error.
//
// Whatever the format, a duration reads as people write it (retry_in=4.5s, not
// nanoseconds), and every message and value passes through redact.String, so
// that no password or token reaches a log, whoever logged it.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	if err := lv.UnmarshalText([]byte(cmp.Or(level, "info"))); err != nil {
		return nil, nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	text := func(color bool) *slog.Logger {
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: lv, TimeFormat: time.TimeOnly + ".000", NoColor: !color, ReplaceAttr: replaceAttr}))
	}
	jsonLog := func() *slog.Logger {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv, ReplaceAttr: replaceAttr}))
	}
	switch strings.ToLower(cmp.Or(format, "auto")) {
	case "auto":
		if tty {
			return text(true), lv, nil
		}
		return jsonLog(), lv, nil
	case "text":
		return text(tty), lv, nil
	case "json":
		return jsonLog(), lv, nil
	}
	return nil, nil, fmt.Errorf("log format %q: use auto, text or json", format)
}

// replaceAttr formats durations as strings and redacts secrets.
func replaceAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindDuration:
		a.Value = slog.StringValue(Round(a.Value.Duration()).String())
	case slog.KindString:
		a.Value = slog.StringValue(redact.String(a.Value.String()))
	case slog.KindAny:
		switch v := a.Value.Any().(type) {
		case error:
			if err := redact.Error(v); err.Error() != v.Error() {
				a.Value = slog.StringValue(err.Error())
			}
		case fmt.Stringer:
			a.Value = slog.StringValue(redact.String(v.String()))
		}
	}
	return a
}

// Round rounds a duration to the precision people read it in: 83ms, 1.3s, 12s.
func Round(d time.Duration) time.Duration {
	switch abs := d.Abs(); {
	case abs >= 10*time.Second:
		return d.Round(time.Second)
	case abs >= time.Second:
		return d.Round(100 * time.Millisecond)
	case abs >= time.Millisecond:
		return d.Round(time.Millisecond)
	default:
		return d.Round(time.Microsecond)
	}
}
