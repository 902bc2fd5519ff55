package sim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// override is the version of one row that replaces its snapshot version.
type override struct {
	rev     int
	at      time.Time // the rowversion of that version
	deleted bool
}

// entityState is what changed in one entity since the snapshot. Rows past the
// snapshot (index count..count+created-1) were created since.
type entityState struct {
	rows    map[int64]override
	created int64
	deleted int64   // how many rows of rows are deleted
	dead    []int64 // the indexes of the deleted rows, ascending
}

// set replaces row i's version, keeping the deleted count.
func (st *entityState) set(i int64, o override) {
	if old, ok := st.rows[i]; ok && old.deleted {
		st.deleted--
	}
	if o.deleted {
		st.deleted++
	}
	st.rows[i] = o
}

// reindex rebuilds dead after a batch of set calls.
func (st *entityState) reindex() {
	st.dead = st.dead[:0]
	for i, o := range st.rows {
		if o.deleted {
			st.dead = append(st.dead, i)
		}
	}
	slices.Sort(st.dead)
}

// driftEpoch is the earliest rowversion drift stamps: after every traffic of the
// demos, which starts on 2026-06-01.
var driftEpoch = time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Current returns row i of entity as the ERP serves it now, and whether it is
// live: its newest version after the traffic applied and the drift made, or its
// snapshot version when nothing touched it. A deleted row comes back at its last
// version with false; an index past the end, or an unknown entity, gives a zero
// Row and false.
func (e *ERP) Current(entity string, i int64) (Row, bool) {
	n, ok := e.snapshotCount(entity)
	if !ok {
		return Row{}, false
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.current(entity, e.state[entity], n, i)
}

// current is Current for callers holding e.mu; n is the snapshot count.
func (e *ERP) current(entity string, st *entityState, n, i int64) (Row, bool) {
	if i < 0 || i >= n+st.created {
		return Row{}, false
	}
	if o, ok := st.rows[i]; ok {
		return e.Revision(entity, i, o.rev, o.at), !o.deleted
	}
	return e.Snapshot(entity, i), true
}

// live reports whether row i exists and is not deleted; the caller holds e.mu.
func live(st *entityState, n, i int64) bool {
	return i >= 0 && i < n+st.created && !st.rows[i].deleted
}

// ApplyTraffic makes the changes of a burst of traffic in the ERP, as the ERP
// that published those events would have: each changed row gets its newest
// version with that version's rowversion, deleted rows go, and the rows the
// traffic created past the snapshot appear. Applied to an ERP nothing else
// changed, the ERP then serves exactly the rows Walk(ch) lists. Applying the same
// changes again changes nothing.
func (e *ERP) ApplyTraffic(ch *Changes) {
	if ch == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, entity := range Entities {
		st := e.state[entity]
		st.created = max(st.created, ch.extra[entity])
		for i, c := range ch.rows[entity] {
			st.set(i, override{rev: c.rev, at: c.at, deleted: c.deleted})
			e.clock = maxTime(e.clock, c.at)
		}
		st.reindex()
	}
}

// DriftConfig asks for changes the ERP makes without publishing any event: what
// a sync that only follows events misses.
type DriftConfig struct {
	Entity string `json:"entity"`
	// Create adds rows past the end (sites and items only: they have no parents).
	Create int `json:"create"`
	// Change moves live rows to their next revision, stamped later than anything
	// the ERP stamped before.
	Change int `json:"change"`
	// Delete removes live rows.
	Delete int `json:"delete"`
	// Seed picks the rows changed and deleted.
	Seed uint64 `json:"seed"`
}

// DriftResult lists the business keys (Row.Key: "a|b" for a composite key) of the
// rows a drift created, changed and deleted, each in key order.
type DriftResult struct {
	Created []string `json:"created"`
	Changed []string `json:"changed"`
	Deleted []string `json:"deleted"`
}

// ErrUnknownEntity is returned for an entity the ERP does not have.
var ErrUnknownEntity = errors.New("unknown entity")

// Drift changes the ERP silently, as d asks. The rows changed and deleted are
// distinct live rows picked by d.Seed (the same state and config pick the same
// rows), never the rows created by the same call. Changed and created rows are
// stamped by a clock that runs one second per row from after the newest
// rowversion the ERP knows, and never before 2026-09-01T00:00:00Z.
func (e *ERP) Drift(d DriftConfig) (DriftResult, error) {
	n, ok := e.snapshotCount(d.Entity)
	if !ok {
		return DriftResult{}, fmt.Errorf("%w %q: the entities are %s", ErrUnknownEntity, d.Entity, strings.Join(Entities, ", "))
	}
	if d.Create < 0 || d.Change < 0 || d.Delete < 0 {
		return DriftResult{}, errors.New("the numbers of rows to create, change and delete must not be negative")
	}
	if d.Create > 0 && d.Entity != "sites" && d.Entity != "items" {
		return DriftResult{}, fmt.Errorf("rows can be created in sites and items only (they have no parents), not in %s; ask to change or delete %s rows instead", d.Entity, d.Entity)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.state[d.Entity]
	total := n + st.created
	alive := total - st.deleted
	need := int64(d.Change) + int64(d.Delete)
	if need > alive {
		return DriftResult{}, fmt.Errorf("%s has %d live rows: ask to change and delete at most %d together (asked %d)", d.Entity, alive, alive, need)
	}
	rng := rand.New(rand.NewPCG(d.Seed, d.Seed^0xd21f7))
	var picked []int64
	if (alive-need)*2 >= total {
		// Most draws hit a live row not picked yet.
		seen := map[int64]bool{}
		for int64(len(picked)) < need {
			i := rng.Int64N(total)
			if !seen[i] && live(st, n, i) {
				seen[i] = true
				picked = append(picked, i)
			}
		}
	} else {
		all := make([]int64, 0, alive)
		for i := range total {
			if live(st, n, i) {
				all = append(all, i)
			}
		}
		for k := range need {
			j := k + rng.Int64N(int64(len(all))-k)
			all[k], all[j] = all[j], all[k]
		}
		picked = all[:need]
	}
	changed, deleted := slices.Clone(picked[:d.Change]), slices.Clone(picked[d.Change:])
	slices.Sort(changed)
	slices.Sort(deleted)
	tick := func() time.Time {
		e.clock = maxTime(e.clock.Add(time.Second), driftEpoch)
		return e.clock
	}
	res := DriftResult{Created: []string{}, Changed: []string{}, Deleted: []string{}}
	for _, i := range changed {
		rev := 1
		if o, ok := st.rows[i]; ok {
			rev = o.rev
		}
		o := override{rev: rev + 1, at: tick()}
		st.set(i, o)
		res.Changed = append(res.Changed, e.Revision(d.Entity, i, o.rev, o.at).Key)
	}
	for _, i := range deleted {
		o, ok := st.rows[i]
		if !ok {
			o = override{rev: 1, at: snapshotBase.Add(time.Duration(i) * time.Second)}
		}
		o.deleted = true
		st.set(i, o)
		res.Deleted = append(res.Deleted, e.Revision(d.Entity, i, o.rev, o.at).Key)
	}
	for range d.Create {
		i := n + st.created
		st.created++
		o := override{rev: 1, at: tick()}
		st.set(i, o)
		res.Created = append(res.Created, e.Revision(d.Entity, i, o.rev, o.at).Key)
	}
	st.reindex()
	return res, nil
}

// nthLive returns the index of the k-th live row (from 0), past the end when there
// are not that many; the caller holds e.mu.
func nthLive(st *entityState, k int64) int64 {
	x := k
	for _, d := range st.dead {
		if d > x {
			break
		}
		x++
	}
	return x
}

// indexOf returns the index of the row whose key fields are vals (as text, in key
// order), if vals has the form of the entity's keys. The caller still checks that
// the row at that index has exactly that key.
func (e *ERP) indexOf(entity string, vals []string) (int64, bool) {
	num := func(s, prefix string) (int64, bool) {
		rest, ok := strings.CutPrefix(s, prefix)
		if !ok || rest == "" || strings.TrimLeft(rest, "0123456789") != "" {
			return 0, false
		}
		v, err := strconv.ParseInt(rest, 10, 64)
		return v, err == nil
	}
	switch entity {
	case "sites":
		return num(vals[0], "S")
	case "items":
		return num(vals[0], "P")
	case "work_orders":
		return num(vals[0], "WO")
	case "work_centers":
		site, ok1 := num(vals[0], "S")
		wc, ok2 := num(vals[1], "WC")
		cps := e.cfg.CentersPerSite
		if !ok1 || !ok2 || wc >= cps || site > (1<<62)/cps {
			return 0, false
		}
		return site*cps + wc, true
	case "work_order_operations":
		order, ok1 := num(vals[0], "WO")
		no, err := strconv.Atoi(vals[1])
		if !ok1 || err != nil || (no != 10 && no != 20 && no != 30) || order > 1<<61 {
			return 0, false
		}
		return order*3 + int64(no/10-1), true
	}
	return 0, false
}
