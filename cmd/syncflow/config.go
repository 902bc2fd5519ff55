package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/memlimit"
	"github.com/syncflow/syncflow/internal/redact"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/telemetry"
	"github.com/syncflow/syncflow/streams"
)

// Defaults for a local setup.
const (
	defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/syncflow?sslmode=disable"
	defaultNATSURL     = "nats://127.0.0.1:4222"
)

// flags wraps a FlagSet whose every flag can also come from a SYNCFLOW_* variable.
type flags struct {
	*flag.FlagSet
	env   map[string]string // flag name -> variable
	args  []string          // positional arguments, wherever they stood among the flags
	usage func()            // prints the command's help (on --help only)
}

// Args, NArg and Arg return the positional arguments.
func (f *flags) Args() []string { return f.args }

// NArg returns the number of positional arguments.
func (f *flags) NArg() int { return len(f.args) }

// Arg returns the i'th positional argument, or "".
func (f *flags) Arg(i int) string {
	if i < len(f.args) {
		return f.args[i]
	}
	return ""
}

func newFlags(c command) *flags {
	fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // prepare reports errors; help goes to stdout
	f := &flags{FlagSet: fs, env: map[string]string{}}
	// The flag package prints the usage on every parse error, and on --help before
	// returning it: a mistake gets one line (parse), --help the help once.
	fs.Usage = func() {}
	f.usage = func() {
		synopsis := c.path
		if c.args != "" {
			synopsis += " " + c.args
		}
		fmt.Fprintf(os.Stdout, "Usage: syncflow %s [flags]\n\n%s\n", synopsis, c.summary)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(os.Stdout, "\nFlags:\n")
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			fs.SetOutput(io.Discard)
		}
	}
	return f
}

func envName(flagName string) string {
	return "SYNCFLOW_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (f *flags) string(p *string, name, def, usage string) {
	f.env[name] = envName(name)
	f.StringVar(p, name, def, usage+" ($"+envName(name)+")")
}

func (f *flags) duration(p *time.Duration, name string, def time.Duration, usage string) {
	f.env[name] = envName(name)
	*p = def
	f.Var((*durationValue)(p), name, usage+" ($"+envName(name)+")")
}

// durationValue is a time.Duration flag whose error says what a duration looks like.
type durationValue time.Duration

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration: use e.g. 500ms, 10s, 2m or 1h30m")
	}
	*d = durationValue(v)
	return nil
}

func (d *durationValue) String() string { return time.Duration(*d).String() }

// size registers a size flag (44MiB, 1GiB, 0) holding bytes.
func (f *flags) size(p *int64, name string, def int64, usage string) {
	f.env[name] = envName(name)
	*p = def
	f.Var((*sizeValue)(p), name, usage+" ($"+envName(name)+")")
}

// sizeValue is a size in bytes, written as GOMEMLIMIT writes it.
type sizeValue int64

func (v *sizeValue) Set(s string) error {
	n, err := memlimit.ParseSize(s)
	if err == nil && n > 0 && n < 1<<20 {
		return fmt.Errorf("%d bytes is less than 1MiB: write a unit, e.g. %dMiB (0: no limit)", n, n)
	}
	*v = sizeValue(n)
	return err
}

func (v *sizeValue) String() string { return memlimit.FormatSize(int64(*v)) }

func (f *flags) int(p *int, name string, def int, usage string) {
	f.env[name] = envName(name)
	f.IntVar(p, name, def, usage+" ($"+envName(name)+")")
}

func (f *flags) bool(p *bool, name string, def bool, usage string) {
	f.env[name] = envName(name)
	f.BoolVar(p, name, def, usage+" ($"+envName(name)+")")
}

// secretFlags are the flags whose values hold secrets, or URLs that may.
var secretFlags = map[string]func(string){
	"database-url":   redact.AddURL,
	"nats-url":       redact.AddURL,
	"apismith-url":   redact.AddURL,
	"nats-password":  func(s string) { redact.Add(s) },
	"nats-token":     func(s string) { redact.Add(s) },
	"apismith-token": func(s string) { redact.Add(s) },
}

// registerSecrets tells package redact the secrets this command was given, so
// that no output, log line or error shows them.
func (f *flags) registerSecrets() {
	f.VisitAll(func(fl *flag.Flag) {
		if add, ok := secretFlags[fl.Name]; ok {
			add(fl.Value.String())
		}
	})
}

// parse applies environment variables first, so that flags on the command line win.
func (f *flags) parse(args []string) error {
	defer f.registerSecrets() // also when parsing fails: the error is printed
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		if v, ok := os.LookupEnv(f.env[fl.Name]); ok && f.env[fl.Name] != "" {
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("$%s: %v", f.env[fl.Name], err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	// Flags may follow positional arguments: `mappings import FILE --dry-run`.
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.usage()
				return errHelp
			}
			return fmt.Errorf("%w: %v (see --help)", errUsage, err)
		}
		rest := f.FlagSet.Args()
		if len(rest) == 0 {
			return nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			f.args = append(f.args, rest...)
			return nil
		}
		f.args = append(f.args, rest[0])
		args = rest[1:]
	}
}

// logging holds the log settings.
type logging struct {
	logFormat string
	logLevel  string
}

func (l *logging) register(f *flags) {
	f.string(&l.logFormat, "log-format", "auto", "log format: auto (text on a terminal, JSON otherwise), text or json")
	f.string(&l.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

// common holds the settings of the commands that use the database.
type common struct {
	databaseURL string
	logging
}

func (c *common) register(f *flags) {
	f.string(&c.databaseURL, "database-url", defaultDatabaseURL, "PostgreSQL URL")
	c.logging.register(f)
}

func (l *logging) logger(w io.Writer) (*slog.Logger, error) {
	log, _, err := telemetry.NewLogger(w, l.logFormat, l.logLevel)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	return log, nil
}

// natsFlags are the connection settings for NATS.
type natsFlags struct{ cfg stream.Config }

func (n *natsFlags) register(f *flags) {
	f.string(&n.cfg.URL, "nats-url", defaultNATSURL, "NATS server URL(s), comma-separated")
	f.string(&n.cfg.CredsFile, "nats-creds", "", "NATS credentials file (.creds)")
	f.string(&n.cfg.NKeyFile, "nats-nkey", "", "NATS nkey seed file")
	f.string(&n.cfg.User, "nats-user", "", "NATS user name")
	f.string(&n.cfg.Password, "nats-password", "", "NATS password (prefer the environment variable)")
	f.string(&n.cfg.Token, "nats-token", "", "NATS token (prefer the environment variable)")
	f.string(&n.cfg.TLSCA, "nats-tls-ca", "", "CA certificate (PEM) to trust for the NATS server")
	f.string(&n.cfg.TLSCert, "nats-tls-cert", "", "client certificate (PEM) for NATS")
	f.string(&n.cfg.TLSKey, "nats-tls-key", "", "client key (PEM) for NATS")
}

// definitions says where the catalog and the stream definitions come from.
type definitions struct {
	catalogPath string
	streamsDir  string
}

func (d *definitions) register(f *flags) {
	f.string(&d.catalogPath, "catalog", "", "entity catalog YAML, for development and tests (default: the catalog stored in the database, see 'syncflow catalog apply')")
	f.string(&d.streamsDir, "streams-dir", "", "folder with the stream JSON (default: the ones built in)")
}

// catalog reads the catalog every process shares, the newest version stored in
// the database, or the --catalog file.
func (d *definitions) catalog(ctx context.Context, databaseURL string) (*catalog.Catalog, error) {
	if d.catalogPath != "" {
		return d.catalogIn(ctx, nil)
	}
	st, err := store.Open(ctx, store.Config{URL: databaseURL, MaxConns: 1})
	if err != nil {
		return nil, fmt.Errorf("reading the stored catalog: %w", err)
	}
	defer st.Close()
	return d.catalogIn(ctx, st)
}

// catalogIn is catalog for a command that has the store open already.
func (d *definitions) catalogIn(ctx context.Context, st *store.Store) (*catalog.Catalog, error) {
	if d.catalogPath != "" {
		data, err := os.ReadFile(d.catalogPath)
		if err != nil {
			return nil, err
		}
		return parseCatalog(data, d.catalogPath)
	}
	return storedCatalog(ctx, st)
}

// storedCatalog parses the newest stored catalog.
func storedCatalog(ctx context.Context, st *store.Store) (*catalog.Catalog, error) {
	v, err := st.LatestCatalog(ctx)
	if errors.Is(err, store.ErrNoCatalog) {
		return nil, errors.New("no catalog is stored in the database: store one with `syncflow catalog apply FILE` (`syncflow migrate up` stores the built-in one in a new database)")
	}
	if err != nil {
		return nil, fmt.Errorf("reading the stored catalog: %w", err)
	}
	return parseCatalog(v.Document, fmt.Sprintf("stored catalog version %d", v.Version))
}

func parseCatalog(data []byte, where string) (*catalog.Catalog, error) {
	cat, err := catalog.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s is invalid, fix it and start again:\n%w", where, err)
	}
	return cat, nil
}

func (d *definitions) streams(cat *catalog.Catalog) (stream.Definitions, error) {
	return stream.LoadDefinitions(d.streamsFS(), cat)
}

// streamsFS holds the stream definitions: the built-in ones or --streams-dir.
func (d *definitions) streamsFS() fs.FS {
	if d.streamsDir != "" {
		return os.DirFS(d.streamsDir)
	}
	return streams.FS
}

func atoiArg(s, what string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %s must be a number, got %q", errUsage, what, s)
	}
	return n, nil
}
