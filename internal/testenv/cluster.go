package testenv

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/syncflow/syncflow/internal/stream"
)

// Cluster is a JetStream cluster of embedded servers on fixed ports, each storing
// in a directory of its own, so that a server can be stopped and started again as
// it was.
type Cluster struct {
	t       testing.TB
	mu      sync.Mutex
	opts    []*server.Options
	servers []*stream.Embedded
}

// NATSCluster starts n servers that form one JetStream cluster, stopped when t
// ends.
func NATSCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := make([]int, 2*n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+i]))
	}
	c := &Cluster{t: t}
	dir := t.TempDir()
	for i := range n {
		c.opts = append(c.opts, &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       ports[i],
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			Cluster:    server.ClusterOpts{Name: "syncflow-test", Host: "127.0.0.1", Port: ports[n+i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
			NoLog:      true,
		})
	}
	c.servers = make([]*stream.Embedded, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.servers[i], errs[i] = stream.StartEmbeddedWith(c.opts[i])
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, s := range c.servers {
			if s != nil {
				s.Stop()
			}
		}
	})
	c.waitForLeader()
	return c
}

// URLs returns the servers' client URLs, comma-separated.
func (c *Cluster) URLs() string {
	var out []string
	for _, o := range c.opts {
		out = append(out, fmt.Sprintf("nats://127.0.0.1:%d", o.Port))
	}
	return strings.Join(out, ",")
}

// Index returns the index of the server named name (n1, n2, ...).
func (c *Cluster) Index(name string) int {
	for i, o := range c.opts {
		if o.ServerName == name {
			return i
		}
	}
	c.t.Fatalf("no server named %q in the cluster", name)
	return -1
}

// Stop stops server i, as a crash would.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.servers[i] != nil {
		c.servers[i].Stop()
		c.servers[i] = nil
	}
}

// Start starts server i again, with its store as it was.
func (c *Cluster) Start(i int) {
	c.t.Helper()
	s, err := stream.StartEmbeddedWith(c.opts[i])
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
	c.waitForLeader()
}

// waitForLeader waits until the cluster has a JetStream meta leader and every
// running server has caught up with it.
func (c *Cluster) waitForLeader() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c.ready() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatal("the JetStream cluster elected no meta leader, or its servers did not catch up with it, within 30s")
}

func (c *Cluster) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	leader := false
	for _, s := range c.servers {
		if s == nil {
			continue
		}
		if !s.JetStreamIsCurrent() {
			return false
		}
		leader = leader || s.JetStreamIsLeader()
	}
	return leader
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
