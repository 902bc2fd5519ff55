package stream

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Embedded is an in-process nats-server with JetStream, for `make run` on a machine
// without a NATS server, and for tests that restart the broker.
type Embedded struct {
	*server.Server
}

// StartEmbedded starts a JetStream server storing under dir, listening on host:port
// (port -1 picks a free one).
func StartEmbedded(host string, port int, dir string) (*Embedded, error) {
	s, err := server.NewServer(&server.Options{
		ServerName: "syncflow-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   dir,
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(readyWithin) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server on %s:%d did not become ready within %s", host, port, readyWithin)
	}
	return &Embedded{Server: s}, nil
}

// readyWithin bounds the wait for a server to take connections: a server of a
// three-node JetStream cluster has taken more than ten seconds on a loaded
// machine (the test suite on two cores).
const readyWithin = 45 * time.Second

// Stop shuts the server down and waits for it.
func (e *Embedded) Stop() {
	e.Shutdown()
	e.WaitForShutdown()
}

// StartEmbeddedWith starts a server with the given options (tests of
// authentication and TLS build them from a configuration file).
func StartEmbeddedWith(opts *server.Options) (*Embedded, error) {
	opts.NoSigs = true
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(readyWithin) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server did not become ready within %s", readyWithin)
	}
	return &Embedded{Server: s}, nil
}
