package store

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Lease is a process's exclusive claim on its replica name: a session advisory
// lock, held by a connection of its own for as long as the process runs. A
// replica name names the rolling sync_batches rows of one process, and a process
// starting under a name closes the rows the last one left running (they belong
// to a crash); two live processes under one name would close each other's. The
// lease makes the second one refuse to start, before it touches anything.
//
// The lock lives as long as its connection: a process that dies loses it at
// once. When the connection drops while the process lives (a database restart),
// Held turns false (the process stops writing under the name), Keep reconnects
// and takes the lock again; if another process took the name in the meantime,
// Keep returns an error and the process stops. A process that takes a name
// whose batches are still running waits LeaseSettle before it closes them, long
// enough for a holder that lost its connection to notice and stop writing.
type Lease struct {
	url, name, tag string
	key            int64

	mu   sync.Mutex
	conn *pgx.Conn
	held atomic.Bool
}

// LeaseSettle is how long a process that took a replica name with batches still
// running waits before it closes them: four times the interval at which Keep checks the
// lease (LeaseCheck), so that a holder whose connection dropped has stopped
// writing.
const (
	LeaseCheck  = 500 * time.Millisecond
	LeaseSettle = 4 * LeaseCheck
)

// Held reports whether the lease is held now: false from the moment Keep finds
// its connection lost until it has taken the lock again.
func (l *Lease) Held() bool { return l.held.Load() }

// LeaseHeldError says the replica name is taken, and by whom.
type LeaseHeldError struct {
	Name   string
	Holder LeaseHolder
}

// LeaseHolder describes the session that holds a lease.
type LeaseHolder struct {
	Tag   string    // the holder's tag: syncflow, its pid and host
	Addr  string    // the address it connected from ("local" for a socket)
	Since time.Time // when its lease connection was opened
}

func (e *LeaseHeldError) Error() string {
	h := e.Holder
	who := "another process"
	if h.Tag != "" {
		who = h.Tag
	}
	since := ""
	if !h.Since.IsZero() {
		since = ", since " + h.Since.UTC().Format(time.RFC3339)
	}
	addr := ""
	if h.Addr != "" {
		addr = " from " + h.Addr
	}
	return fmt.Sprintf("replica name %q is in use by a running process (%s%s%s): stop it first, or give this one another --replica name", e.Name, who, addr, since)
}

// leaseKey is the advisory lock of a replica name: 64 bits of a hash of the name
// with a prefix of SyncFlow's own, so that two names (or another application's
// locks) collide with odds of one in 2^64, not one in 2^32.
func leaseKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("syncflow replica lease\x00" + name))
	return int64(h.Sum64())
}

// AcquireLease takes the lease on a replica name. tag describes this process to
// a second one that finds the name taken (e.g. "syncflow pid=123 host=vm1"). It
// waits up to wait for a holder that is going away (a process that was just
// killed), then returns a *LeaseHeldError naming the holder.
func AcquireLease(ctx context.Context, dbURL, name, tag string, wait time.Duration) (*Lease, error) {
	// PostgreSQL keeps 63 bytes of an application name, printable ASCII only.
	clean := []byte(tag)
	for i, b := range clean {
		if b < 32 || b > 126 {
			clean[i] = '?'
		}
	}
	if len(clean) > 63 {
		clean = clean[:63]
	}
	l := &Lease{url: dbURL, name: name, tag: string(clean), key: leaseKey(name)}
	deadline := time.Now().Add(wait)
	for {
		err := l.acquire(ctx)
		var held *LeaseHeldError
		if err == nil || !errors.As(err, &held) || time.Now().After(deadline) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// acquire connects and tries the lock once.
func (l *Lease) acquire(ctx context.Context) error {
	if err := CheckURL(l.url); err != nil {
		return err
	}
	cfg, err := pgx.ParseConfig(l.url)
	if err != nil {
		return fmt.Errorf("database URL %s: %v", RedactURL(l.url), redactErr(err, l.url))
	}
	cfg.ConnectTimeout = 5 * time.Second
	// The holder's tag, for the error a second process prints (PostgreSQL keeps
	// 63 bytes of it).
	cfg.RuntimeParams["application_name"] = l.tag
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return notConnected(l.url, err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, l.key).Scan(&ok); err != nil {
		conn.Close(ctx)
		return fmt.Errorf("taking the lease on replica name %q: %w", l.name, err)
	}
	if !ok {
		holder := l.holder(ctx, conn)
		conn.Close(ctx)
		return &LeaseHeldError{Name: l.name, Holder: holder}
	}
	l.mu.Lock()
	l.conn = conn
	l.mu.Unlock()
	l.held.Store(true)
	return nil
}

// holder reads who holds the lock, as far as the server shows it.
func (l *Lease) holder(ctx context.Context, conn *pgx.Conn) LeaseHolder {
	var h LeaseHolder
	var since *time.Time
	_ = conn.QueryRow(ctx, `SELECT coalesce(a.application_name, ''), coalesce(host(a.client_addr), CASE WHEN a.pid IS NOT NULL THEN 'local' END, ''), a.backend_start
		FROM pg_locks k LEFT JOIN pg_stat_activity a ON a.pid = k.pid
		WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1
		  AND k.classid = (($1::bigint >> 32) & 4294967295)::oid AND k.objid = ($1::bigint & 4294967295)::oid
		  AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		LIMIT 1`, l.key).Scan(&h.Tag, &h.Addr, &since)
	if since != nil {
		h.Since = *since
	}
	return h
}

// Keep holds the lease until ctx ends: it checks the connection every interval,
// and after a connection loss takes the lock again. It returns an error only
// when another process took the name meanwhile.
func (l *Lease) Keep(ctx context.Context, interval time.Duration, log *slog.Logger) error {
	lost := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
		l.mu.Lock()
		conn := l.conn
		l.mu.Unlock()
		if conn != nil {
			pctx, cancel := context.WithTimeout(ctx, interval)
			err := conn.Ping(pctx)
			cancel()
			if err == nil || ctx.Err() != nil {
				continue
			}
			l.held.Store(false)
			log.Warn("the connection holding the replica lease was lost; writing stops until the lease is taken again", "replica", l.name, "err", err)
			conn.Close(context.Background())
			l.mu.Lock()
			l.conn = nil
			l.mu.Unlock()
			lost = true
		}
		err := l.acquire(ctx)
		var held *LeaseHeldError
		switch {
		case err == nil:
			if lost {
				log.Info("replica lease taken again; writing resumes", "replica", l.name)
			}
			lost = false
		case errors.As(err, &held):
			// Our own old session may linger on the server for a moment.
			if held.Holder.Tag == l.tag {
				continue
			}
			return fmt.Errorf("lost the replica lease: %w", err)
		case ctx.Err() != nil:
			return nil
		default:
			// The database is away: the rest of the service rides the outage out,
			// and so does the lease.
		}
	}
}

// Release gives the lease up (closing its connection does).
func (l *Lease) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held.Store(false)
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		l.conn.Close(ctx)
		l.conn = nil
	}
}
