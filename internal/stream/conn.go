package stream

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/redact"
)

// Conn is a connection to NATS with its JetStream context, and the embedded
// server Dial started when no NATS answered, if it did.
type Conn struct {
	// JS is the JetStream context, for Apply, NewFetcher, NewAdvisoryReader and
	// StrayFinder.
	JS       jetstream.JetStream
	nc       *nats.Conn
	embedded *Embedded
}

// Dial connects as Connect does. When nothing answers and embeddedDir is set, it
// first starts an embedded JetStream server on the URL's address, storing there.
func Dial(cfg Config, embeddedDir string) (*Conn, error) {
	nc, embedded, err := connectOrEmbed(cfg, embeddedDir)
	if err != nil {
		return nil, err
	}
	c := &Conn{nc: nc, embedded: embedded}
	if c.JS, err = jetstream.New(nc); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func connectOrEmbed(cfg Config, embeddedDir string) (*nats.Conn, *Embedded, error) {
	nc, err := Connect(cfg)
	if err == nil || embeddedDir == "" {
		if err != nil {
			err = fmt.Errorf("%w (is NATS running? `make run` starts an embedded one with --embedded-nats-dir)", err)
		}
		return nc, nil, err
	}
	u, perr := url.Parse(strings.Split(cfg.URL, ",")[0])
	if perr != nil {
		return nil, nil, fmt.Errorf("nats URL %s: %v", redact.String(cfg.URL), redact.String(perr.Error()))
	}
	hostname, portText, _ := net.SplitHostPort(u.Host)
	port, _ := strconv.Atoi(portText)
	if port == 0 {
		port = 4222
	}
	if err := os.MkdirAll(embeddedDir, 0o755); err != nil {
		return nil, nil, err
	}
	srv, err := StartEmbedded(hostname, port, embeddedDir)
	if err != nil {
		return nil, nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log.Info("no NATS answered; started an embedded JetStream server", "url", srv.ClientURL(), "store_dir", embeddedDir)
	nc, err = Connect(cfg)
	if err != nil {
		srv.Stop()
		return nil, nil, err
	}
	return nc, srv, nil
}

// Status says whether the connection is up, and its state in NATS's words.
func (c *Conn) Status() (connected bool, status string) {
	return c.nc.IsConnected(), c.nc.Status().String()
}

// URL is the server connected to, without credentials.
func (c *Conn) URL() string { return redact.String(c.nc.ConnectedUrlRedacted()) }

// Flush waits up to timeout for what was sent (acks and naks) to reach the server.
func (c *Conn) Flush(timeout time.Duration) error { return c.nc.FlushTimeout(timeout) }

// Close closes the connection, then stops the embedded server, if any.
func (c *Conn) Close() {
	c.nc.Close()
	if c.embedded != nil {
		c.embedded.Stop()
	}
}
