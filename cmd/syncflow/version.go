package main

import (
	"cmp"
	"context"
	"fmt"
	"runtime/debug"
)

// version and commit are set at build time by `make build` (-ldflags "-X
// main.version=... -X main.commit=..."), for builds where Go cannot stamp the
// version control information itself; otherwise the build info says.
var version, commit = "", ""

func versionCommand() command {
	return command{path: "version", summary: "print the version, commit and Go version of this binary (also --version)",
		setup: func(*flags) runFunc {
			return func(context.Context, []string) error {
				fmt.Println(versionLine())
				return nil
			}
		}}
}

// versionLine describes the binary from its build info: the module version, the
// commit and its time (with "+dirty" for uncommitted changes), the Go version.
func versionLine() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "syncflow " + cmp.Or(version, "(unknown version)") + " (no build info)"
	}
	v := cmp.Or(version, info.Main.Version)
	if v == "" || v == "(devel)" {
		v = "(development build)"
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	rev := cmp.Or(commit, settings["vcs.revision"], "unknown")
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if settings["vcs.modified"] == "true" {
		rev += "+dirty"
	}
	line := fmt.Sprintf("syncflow %s, commit %s", v, rev)
	if t := settings["vcs.time"]; t != "" {
		line += " of " + t
	}
	return line + ", built with " + info.GoVersion
}
