package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
)

// command is one thing a user types: `prune`, `dlq list`. Each has flags of its
// own and accepts no other: a flag of another command is a usage error that names
// the commands that take it, so that nothing runs with part of what was typed
// silently ignored.
type command struct {
	// path is the command as typed: "prune", "dlq retry".
	path string
	// args names the positional arguments in the synopsis ("UID...", "FILE");
	// minArgs and maxArgs bound their number (maxArgs -1: any number).
	args             string
	minArgs, maxArgs int
	summary          string
	// setup registers the command's flags and returns what runs it.
	setup func(f *flags) runFunc
}

type runFunc func(ctx context.Context, args []string) error

// errHelp is returned when --help was asked for: exit code 0.
var errHelp = errors.New("help")

// groups are the commands that take an action word, with their summaries.
var groups = []struct{ name, summary string }{
	{"migrate", "apply or inspect the bridge schema migrations: up | down [N] | version | force V"},
	{"catalog", "the entity catalog stored in the database: apply FILE | check [FILE] | show [--version N] | history | refresh"},
	{"streams", "create or update the JetStream streams and consumers: apply"},
	{"mappings", "field-mapping rules: list | export | import FILE (CSV or JSON)"},
	{"dlq", "dead letters: list | groups | show UID | retry | resolve | purge"},
	{"parked", "children waiting for their parents: list | release | expire"},
	{"schedule", "backfill schedules: list | set ENTITY | enable | disable | reset"},
	{"db", "database upkeep: gin enable | gin disable (the dead letters' search index)"},
}

// allCommands returns every command, in the order of the help.
func allCommands() []command {
	var all []command
	for _, part := range [][]command{
		{runCommand()}, migrateCommands(), catalogCommands(), driftCommands(), streamsCommands(), mappingsCommands(), dlqCommands(), parkedCommands(),
		{replayCommand(), backfillCommand(), verifyCommand()}, scheduleCommands(), dbCommands(), {statusCommand(), pruneCommand(), versionCommand()},
	} {
		all = append(all, part...)
	}
	return all
}

// prepared is a command with its flags parsed, ready to run.
type prepared struct {
	cmd  command
	run  runFunc
	args []string
}

// prepare finds the command args name, parses its flags and checks its
// positional arguments; it runs nothing. On an error, the path names the command
// as far as it was found.
func prepare(args []string) (p *prepared, path string, err error) {
	p, err = prepareCommand(args, &path)
	return p, path, err
}

func prepareCommand(args []string, path *string) (*prepared, error) {
	*path = args[0]
	all := allCommands()
	name := args[0]
	var family []command
	for _, c := range all {
		if c.path == name || strings.HasPrefix(c.path, name+" ") {
			family = append(family, c)
		}
	}
	if len(family) == 0 {
		return nil, fmt.Errorf("%w: unknown command %q: run `syncflow --help` for the list", errUsage, name)
	}
	rest := args[1:]
	chosen := family[0]
	if chosen.path != name {
		// A command with actions: the action is the first positional argument,
		// wherever it stands among the flags.
		i := actionIndex(family, rest)
		if i < 0 {
			if wantsHelp(rest) {
				groupHelp(os.Stdout, name, family)
				return nil, errHelp
			}
			return nil, fmt.Errorf("%w: say what to do: %s (see `syncflow %s --help`)", errUsage, actionList(family, name), name)
		}
		action := rest[i]
		idx := slices.IndexFunc(family, func(c command) bool { return c.path == name+" "+action })
		if idx < 0 {
			return nil, fmt.Errorf("%w: unknown %s action %q: use %s", errUsage, name, action, actionList(family, name))
		}
		chosen = family[idx]
		rest = append(slices.Clone(rest[:i]), rest[i+1:]...)
	}
	*path = chosen.path
	f := newFlags(chosen)
	run := chosen.setup(f)
	if err := checkFlags(f, chosen, rest, all); err != nil {
		return nil, err
	}
	if err := f.parse(rest); err != nil {
		return nil, err
	}
	n := f.NArg()
	switch {
	case n < chosen.minArgs:
		return nil, fmt.Errorf("%w: `syncflow %s` needs %s (see --help)", errUsage, chosen.path, chosen.args)
	case chosen.maxArgs >= 0 && n > chosen.maxArgs:
		extra := f.Args()[chosen.maxArgs]
		if chosen.maxArgs == 0 {
			if f.Lookup("entity") != nil {
				return nil, fmt.Errorf("%w: `syncflow %s` takes no arguments, got %q (filters are flags, e.g. --entity %s; see --help)", errUsage, chosen.path, extra, extra)
			}
			return nil, fmt.Errorf("%w: `syncflow %s` takes no arguments, got %q (its settings are flags: see --help)", errUsage, chosen.path, extra)
		}
		return nil, fmt.Errorf("%w: `syncflow %s` takes %s, got the extra argument %q (see --help)", errUsage, chosen.path, chosen.args, extra)
	}
	return &prepared{cmd: chosen, run: run, args: f.Args()}, nil
}

// actionIndex returns the index of the first positional argument in args, or -1.
// A flag's value is not one: the family's flags say which flags take a value.
func actionIndex(family []command, args []string) int {
	takesValue := map[string]bool{}
	for _, c := range family {
		f := newFlags(c)
		c.setup(f)
		f.VisitAll(func(fl *flag.Flag) {
			if b, ok := fl.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
				takesValue[fl.Name] = true
			}
		})
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			if i+1 < len(args) {
				return i + 1
			}
			return -1
		case strings.HasPrefix(a, "-") && a != "-":
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && takesValue[name] {
				i++
			}
		default:
			return i
		}
	}
	return -1
}

func wantsHelp(args []string) bool {
	return slices.ContainsFunc(args, func(a string) bool { return a == "-h" || a == "-help" || a == "--help" })
}

func actionList(family []command, name string) string {
	var out []string
	for _, c := range family {
		out = append(out, strings.TrimPrefix(c.path, name+" "))
	}
	if len(out) == 1 {
		return out[0]
	}
	return strings.Join(out[:len(out)-1], ", ") + " or " + out[len(out)-1]
}

// checkFlags refuses any flag that is not the command's own, naming the commands
// that take it.
func checkFlags(f *flags, cmd command, args []string, all []command) error {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return nil
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "h" || name == "help" {
			continue
		}
		if fl := f.Lookup(name); fl != nil {
			if b, ok := fl.Value.(interface{ IsBoolFlag() bool }); !hasValue && (!ok || !b.IsBoolFlag()) {
				i++ // its value, which may start with a dash: --reason "-1 is not"
			}
			continue
		}
		var takers []string
		for _, other := range all {
			if other.path == cmd.path {
				continue
			}
			of := newFlags(other)
			other.setup(of)
			if of.Lookup(name) != nil {
				takers = append(takers, "`"+other.path+"`")
			}
		}
		if len(takers) == 0 {
			return fmt.Errorf("%w: unknown flag --%s (see `syncflow %s --help`)", errUsage, name, cmd.path)
		}
		return fmt.Errorf("%w: --%s is not a flag of `syncflow %s`; it belongs to %s (see `syncflow %s --help`)",
			errUsage, name, cmd.path, joinAnd(takers), cmd.path)
	}
	return nil
}

func joinAnd(xs []string) string {
	if len(xs) == 1 {
		return xs[0]
	}
	return strings.Join(xs[:len(xs)-1], ", ") + " and " + xs[len(xs)-1]
}

// usage prints the list of commands.
func usage(w io.Writer) {
	fmt.Fprint(w, "syncflow keeps ScheduleHub in sync with the IFS ERP through NATS JetStream.\n\nUsage: syncflow COMMAND [ACTION] [flags]\n\nCommands:\n")
	seen := map[string]bool{}
	summaries := map[string]string{}
	for _, g := range groups {
		summaries[g.name] = g.summary
	}
	for _, c := range allCommands() {
		name, _, _ := strings.Cut(c.path, " ")
		if seen[name] {
			continue
		}
		seen[name] = true
		summary := c.summary
		if s, ok := summaries[name]; ok {
			summary = s
		}
		fmt.Fprintf(w, "  %-9s %s\n", name, summary)
	}
	fmt.Fprint(w, "\nRun `syncflow COMMAND --help` for a command's actions and flags. A flag whose help\nnames a $SYNCFLOW_* variable can also be set from the environment; the flag wins.\n\n"+
		"Exit codes: 0 success, 1 failure, 2 a mistake on the command line, 3 a UID, name or\nfilter that matches nothing known.\n")
}

func groupHelp(w io.Writer, name string, family []command) {
	fmt.Fprintf(w, "Usage: syncflow %s ACTION [flags]\n\nActions:\n", name)
	for _, c := range family {
		synopsis := strings.TrimPrefix(c.path, name+" ")
		if c.args != "" {
			synopsis += " " + c.args
		}
		fmt.Fprintf(w, "  %-22s %s\n", synopsis, c.summary)
	}
	fmt.Fprintf(w, "\nRun `syncflow %s ACTION --help` for the action's flags.\n", name)
}

// flagNames returns the names of a command's flags.
func flagNames(c command) []string {
	f := newFlags(c)
	c.setup(f)
	names := map[string]bool{}
	f.VisitAll(func(fl *flag.Flag) { names[fl.Name] = true })
	return slices.Sorted(maps.Keys(names))
}
