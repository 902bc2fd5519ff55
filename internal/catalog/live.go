package catalog

import "sync/atomic"

// Live holds the catalog in force. A new version replaces it as a whole, and
// each piece of work (a batch, a sweep, a retry round) takes the one in force
// when it starts, so that no piece of work sees two versions.
type Live struct{ p atomic.Pointer[Catalog] }

// NewLive returns a Live holding c.
func NewLive(c *Catalog) *Live {
	l := &Live{}
	l.p.Store(c)
	return l
}

// Load returns the catalog in force.
func (l *Live) Load() *Catalog {
	if l == nil {
		return nil
	}
	return l.p.Load()
}

// Store puts c in force for the work that starts after it.
func (l *Live) Store(c *Catalog) { l.p.Store(c) }
