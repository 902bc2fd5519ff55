// Package stream is SyncFlow's JetStream adapter: connecting, creating the streams
// and durable consumers (from the stream files in streams/ and the catalog),
// fetching batches of messages that settle through closures (pipeline.Message),
// publishing, and reading the max-deliveries advisories. It is the only package
// besides cmd that imports nats.go.
//
// It decides nothing about the data; it imports only the core (event, catalog,
// pipeline, backfill, deadletter for the types it hands them) and the consumer's
// message type, never internal/store.
package stream

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/redact"
)

// Config says how to reach NATS.
type Config struct {
	// URL is the server URL list (default nats://127.0.0.1:4222).
	URL string
	// Name identifies the connection in the server's monitoring.
	Name string
	// CredsFile is a .creds file (JWT + nkey seed); empty for none.
	CredsFile string
	// NKeyFile is an nkey seed file; empty for none.
	NKeyFile string
	// User and Password authenticate with user/password when User is set.
	User, Password string
	// Token authenticates with a token when set.
	Token string
	// TLSCA, TLSCert and TLSKey configure TLS (the CA to trust, a client certificate).
	TLSCA, TLSCert, TLSKey string
	// Logger receives connection events.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.URL = cmp.Or(c.URL, nats.DefaultURL)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate says what is wrong with the settings, before any connection is tried.
func (c Config) Validate() error {
	var errs []error
	for _, u := range strings.Split(cmp.Or(c.URL, nats.DefaultURL), ",") {
		if _, err := url.Parse(strings.TrimSpace(u)); err != nil {
			// The parser's message would quote pieces of a password.
			errs = append(errs, fmt.Errorf("the NATS URL %s does not parse: write it as nats://HOST:4222 and pass credentials with --nats-user/--nats-password, --nats-token or --nats-creds", redact.String(u)))
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("a NATS TLS client certificate needs both --nats-tls-cert and --nats-tls-key"))
	}
	if c.Password != "" && c.User == "" {
		errs = append(errs, errors.New("a NATS password needs a user (--nats-user)"))
	}
	return errors.Join(errs...)
}

// Connect connects to NATS and keeps reconnecting forever: a broker restart is
// ridden out, never fatal.
func Connect(cfg Config) (*nats.Conn, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "url", redact.String(nc.ConnectedUrlRedacted())) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { log.Warn("nats error", "err", err) }),
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NKeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey file %s: %w", cfg.NKeyFile, err)
		}
		opts = append(opts, o)
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.Token != "" {
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.TLSCA != "" || cfg.TLSCert != "" {
		tc, err := tlsConfig(cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	servers := cfg.URL
	nc, err := nats.Connect(servers, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats at %s: %w", redact.String(servers), redact.Error(err))
	}
	return nc, nil
}

func tlsConfig(cfg Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.TLSCA != "" {
		pem, err := os.ReadFile(cfg.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("nats TLS CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nats TLS CA %s: no PEM certificate found", cfg.TLSCA)
		}
		tc.RootCAs = pool
	}
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("nats TLS client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Fetcher pulls batches from one durable consumer.
type Fetcher struct {
	consumer jetstream.Consumer
	source   event.Source
	// MaxBytes bounds the bytes of one fetch (default DefaultFetchBytes): a batch
	// of 1 MiB events holds a few of them, not a batch size of them.
	MaxBytes int
}

// DefaultFetchBytes bounds the bytes of one fetch.
const DefaultFetchBytes = 4 << 20

// NewFetcher binds to an existing durable consumer.
func NewFetcher(ctx context.Context, js jetstream.JetStream, source event.Source, durable string) (*Fetcher, error) {
	c, err := js.Consumer(ctx, source.Stream, durable)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w (run `syncflow streams apply`)", durable, source.Stream, err)
	}
	return &Fetcher{consumer: c, source: source}, nil
}

// Refresh reads the consumer's configuration again from the server (AckWait
// answers from what it read last).
func (f *Fetcher) Refresh(ctx context.Context) error {
	_, err := f.consumer.Info(ctx)
	return err
}

// AckWait is how long the server waits for an ack before it redelivers a message
// (the consumer's ack_wait, or the first step of its backoff).
func (f *Fetcher) AckWait() time.Duration {
	cfg := f.consumer.CachedInfo().Config
	if len(cfg.BackOff) > 0 {
		return cfg.BackOff[0]
	}
	return cfg.AckWait
}

// Fetch returns up to n messages and about MaxBytes (at least one message):
// whatever is available right away, or, when nothing is, the first message to
// arrive within wait plus whatever came with it. It never holds a partial batch
// back for the full wait.
//
// The first message comes alone (its size is bounded by the stream's
// max_msg_size); its metadata says how many more are pending, and the rest of
// the batch is asked for with both a count and a byte limit. The server answers
// at once, as that many are there; should another replica take some first, the
// request ends after a short wait rather than FetchWait.
func (f *Fetcher) Fetch(ctx context.Context, n int, wait time.Duration) ([]pipeline.Message, error) {
	first, pending, err := f.collect(f.consumer.FetchNoWait(1))
	if err != nil {
		return first, err
	}
	if len(first) == 0 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// The wait is the server's (FetchMaxWait): the request ends with the
		// server's word, after any message it sent. A client-side deadline
		// (FetchContext) could give up while the server, which got the request
		// later, still sends a message: that message would go to nobody and
		// come back only after the ack wait. A shutdown waits at most wait.
		first, pending, err = f.collect(f.consumer.Fetch(1, jetstream.FetchMaxWait(wait)))
		if ctx.Err() != nil {
			for _, m := range first {
				_ = m.NakWithDelay(0)
			}
			return nil, ctx.Err()
		}
		if err != nil || len(first) == 0 {
			return first, err
		}
	}
	budget := cmp.Or(f.MaxBytes, DefaultFetchBytes) - len(first[0].Delivery.Data)
	// The pending count does not count redeliveries: a redelivered first message
	// (a restart, another replica's ack wait) likely has company, so ask for a
	// whole batch then, at the cost of restWait when it has none.
	rest := min(uint64(n-1), pending)
	if first[0].NumDelivered > 1 {
		rest = uint64(n - 1)
	}
	if rest == 0 || budget <= 0 {
		return first, nil
	}
	more, _, err := f.collect(f.consumer.Fetch(int(rest), jetstream.FetchMaxBytes(budget), jetstream.FetchMaxWait(restWait)))
	return append(first, more...), err
}

// restWait is how long the request for the rest of a batch may wait when the
// messages it counted on were taken by another replica.
const restWait = 20 * time.Millisecond

// collect turns a fetched batch into messages that settle through closures over
// their JetStream messages; pending is the consumer's count of messages not yet
// delivered when the first one was.
func (f *Fetcher) collect(batch jetstream.MessageBatch, err error) (out []pipeline.Message, pending uint64, _ error) {
	if err != nil {
		return nil, 0, err
	}
	for m := range batch.Messages() {
		md, err := m.Metadata()
		if err != nil {
			return out, pending, err
		}
		if len(out) == 0 {
			pending = md.NumPending
		}
		out = append(out, pipeline.Message{
			Delivery:     pipeline.Delivery{Subject: m.Subject(), Source: f.source, StreamSeq: md.Sequence.Stream, Data: m.Data(), Published: md.Timestamp},
			NumDelivered: md.NumDelivered,
			Ack:          m.Ack,
			NakWithDelay: m.NakWithDelay,
			InProgress:   m.InProgress,
		})
	}
	if err := batch.Error(); err != nil && !requestEnded(err) {
		return out, pending, err
	}
	return out, pending, nil
}

// requestEnded reports whether err only says how a pull request ended, the
// messages that came with it being good: its wait ran out, nothing was there, the
// whole batch was sent with bytes to spare, the next message was larger than the
// bytes left (the next fetch takes it alone), or the consumer's leader changed
// (the next request goes to the new one).
func requestEnded(err error) bool {
	for _, end := range []error{nats.ErrTimeout, context.DeadlineExceeded, context.Canceled, jetstream.ErrNoMessages,
		jetstream.ErrBatchCompleted, jetstream.ErrMaxBytesExceeded, jetstream.ErrConsumerLeadershipChanged} {
		if errors.Is(err, end) {
			return true
		}
	}
	return false
}

// Pending returns the consumer's messages not yet delivered and those delivered but
// not acknowledged.
func (f *Fetcher) Pending(ctx context.Context) (pending, ackPending uint64, err error) {
	info, err := f.consumer.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.NumPending, uint64(info.NumAckPending), nil
}
