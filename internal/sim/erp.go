// Package sim is a deterministic synthetic ERP for the demo catalog: it serves the
// rows of every entity over APISmith's HTTP API (so the backfill has a source), and
// generates realistic realtime change events (children before parents, duplicates,
// out-of-order versions, deletes, poison) together with the state a perfect sync
// must end in. Rows are computed from their index, never stored: a million items
// cost nothing until they are asked for. What changed since the snapshot (applied
// traffic, drift) is kept as overrides of single rows.
package sim

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Config sizes the ERP.
type Config struct {
	Sites          int64 // default 10
	CentersPerSite int64 // default 10
	Items          int64 // default 1000
	WorkOrders     int64 // default 1000 (three operations each)
}

func (c Config) withDefaults() Config {
	if c.Sites <= 0 {
		c.Sites = 10
	}
	if c.CentersPerSite <= 0 {
		c.CentersPerSite = 10
	}
	if c.Items <= 0 {
		c.Items = 1000
	}
	if c.WorkOrders <= 0 {
		c.WorkOrders = 1000
	}
	return c
}

// Entities lists the demo entities, parents first.
var Entities = []string{"sites", "items", "work_centers", "work_orders", "work_order_operations"}

// ERP is the synthetic ERP. It is safe for concurrent use.
type ERP struct {
	cfg Config

	mu    sync.RWMutex
	state map[string]*entityState // every entity's changes since the snapshot
	clock time.Time               // the newest rowversion the ERP has stamped
}

// New returns an ERP of the given size, in its snapshot state.
func New(cfg Config) *ERP {
	e := &ERP{cfg: cfg.withDefaults(), state: map[string]*entityState{}}
	for _, entity := range Entities {
		e.state[entity] = &entityState{rows: map[int64]override{}}
		if n, _ := e.snapshotCount(entity); n > 0 {
			e.clock = maxTime(e.clock, snapshotBase.Add(time.Duration(n-1)*time.Second))
		}
	}
	return e
}

// Count returns how many live rows entity has now: the snapshot's, plus the rows
// created since, minus the rows deleted.
func (e *ERP) Count(entity string) (int64, bool) {
	n, ok := e.snapshotCount(entity)
	if !ok {
		return 0, false
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	st := e.state[entity]
	return n + st.created - st.deleted, true
}

// snapshotCount returns how many rows entity has in the snapshot.
func (e *ERP) snapshotCount(entity string) (int64, bool) {
	switch entity {
	case "sites":
		return e.cfg.Sites, true
	case "work_centers":
		return e.cfg.Sites * e.cfg.CentersPerSite, true
	case "items":
		return e.cfg.Items, true
	case "work_orders":
		return e.cfg.WorkOrders, true
	case "work_order_operations":
		return e.cfg.WorkOrders * 3, true
	}
	return 0, false
}

// Row is one ERP row at one revision.
type Row struct {
	Entity     string
	Index      int64
	Key        string // the business key values joined by "|", in key order
	RowVersion string
	Data       map[string]any
}

// snapshotBase is the rowversion of revision 1 of row 0; row i is i seconds later.
var snapshotBase = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// CheckField is the field of each entity that carries the revision ("<entity> <i>
// rev <r>"), so that a target row shows which version was applied.
var CheckField = map[string]string{
	"sites": "DESCRIPTION", "work_centers": "DESCRIPTION", "items": "DESCRIPTION",
	"work_orders": "STATUS", "work_order_operations": "DESCRIPTION",
}

// Revision returns row i of entity at revision rev, stamped with rowversion at.
// Indexes at or past the snapshot's count are rows created after the snapshot.
func (e *ERP) Revision(entity string, i int64, rev int, at time.Time) Row {
	c := e.cfg
	check := fmt.Sprintf("%s %d rev %d", entity, i, rev)
	r := Row{Entity: entity, Index: i, RowVersion: at.UTC().Format(time.RFC3339)}
	switch entity {
	case "sites":
		r.Key = fmt.Sprintf("S%04d", i)
		r.Data = map[string]any{"CONTRACT": r.Key, "DESCRIPTION": check, "COMPANY": "ACME", "TIME_ZONE": "Europe/Stockholm"}
	case "work_centers":
		site, wc := fmt.Sprintf("S%04d", i/c.CentersPerSite), fmt.Sprintf("WC%04d", i%c.CentersPerSite)
		r.Key = site + "|" + wc
		r.Data = map[string]any{"CONTRACT": site, "WORK_CENTER_NO": wc, "DESCRIPTION": check, "WORK_CENTER_CODE": "M", "CAPACITY_HOURS": 8 + i%9}
	case "items":
		r.Key = fmt.Sprintf("P%08d", i)
		r.RowVersion = at.UTC().Format("20060102150405")
		r.Data = map[string]any{"PART_NO": r.Key, "DESCRIPTION": check, "UNIT_MEAS": "pcs", "PART_STATUS": "A", "LEAD_TIME_DAYS": i % 30}
	case "work_orders":
		r.Key = fmt.Sprintf("WO%08d", i)
		r.Data = map[string]any{"ORDER_NO": r.Key, "CONTRACT": fmt.Sprintf("S%04d", i%c.Sites), "PART_NO": fmt.Sprintf("P%08d", e.itemOf(i)),
			"LOT_SIZE": 1 + i%50, "STATUS": check, "NEED_DATE": time.Date(2026, 12, 1+int(i%28), 0, 0, 0, 0, time.UTC).Format(time.DateOnly)}
	case "work_order_operations":
		order, no := i/3, (i%3+1)*10
		r.Key = fmt.Sprintf("WO%08d|%d", order, no)
		site := order % c.Sites
		r.Data = map[string]any{"ORDER_NO": fmt.Sprintf("WO%08d", order), "OPERATION_NO": no, "CONTRACT": fmt.Sprintf("S%04d", site),
			"WORK_CENTER_NO": fmt.Sprintf("WC%04d", (order+no)%c.CentersPerSite), "DESCRIPTION": check, "SETUP_HOURS": 0.5, "RUN_HOURS": 1.25}
	}
	return r
}

// itemOf is the item a work order makes: an existing one for snapshot orders, a
// new one (created with the order) for orders past the snapshot.
func (e *ERP) itemOf(order int64) int64 {
	if order < e.cfg.WorkOrders {
		return order % e.cfg.Items
	}
	return e.cfg.Items + (order - e.cfg.WorkOrders)
}

// Snapshot returns revision 1 of row i, as the source serves it until something
// changes the row (see Current).
func (e *ERP) Snapshot(entity string, i int64) Row {
	return e.Revision(entity, i, 1, snapshotBase.Add(time.Duration(i)*time.Second))
}

// Keys returns the business-key field names of entity, in order.
func Keys(entity string) []string {
	switch entity {
	case "sites":
		return []string{"CONTRACT"}
	case "work_centers":
		return []string{"CONTRACT", "WORK_CENTER_NO"}
	case "items":
		return []string{"PART_NO"}
	case "work_orders":
		return []string{"ORDER_NO"}
	case "work_order_operations":
		return []string{"ORDER_NO", "OPERATION_NO"}
	}
	return nil
}

// Known reports whether entity is one of the demo entities.
func Known(entity string) bool { return slices.Contains(Entities, entity) }
