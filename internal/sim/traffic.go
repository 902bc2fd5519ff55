package sim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// TrafficConfig shapes a burst of realtime change events. Shares are fractions of
// the events.
type TrafficConfig struct {
	Events int    `json:"events"`
	Seed   uint64 `json:"seed"`
	// ChildrenFirst is the share of new work-order chains (an item, a work order
	// and its three operations, created after the snapshot) published children
	// first: operations, then the order, then the item.
	ChildrenFirst float64 `json:"children_first"`
	// Duplicates is the share of events published twice.
	Duplicates float64 `json:"duplicates"`
	// OutOfOrder is the share of changes whose newer version is published first.
	OutOfOrder float64 `json:"out_of_order"`
	// Deletes is the share of deletes (operations, and items no order uses).
	Deletes float64 `json:"deletes"`
	// Poison is the share of events that cannot be applied: malformed JSON or a
	// missing key field. They end as dead letters.
	Poison float64 `json:"poison"`
	// Start stamps the first change (default 2026-06-01, after every snapshot row).
	Start time.Time `json:"start,omitzero"`
}

// Event is one message to publish.
type Event struct {
	Subject string
	Body    []byte
}

// change is the final version of one row after the traffic.
type change struct {
	rev     int
	at      time.Time // the rowversion of that version
	deleted bool
}

// Changes is what a burst of traffic did to the ERP: the state it leaves.
type Changes struct {
	rows  map[string]map[int64]change
	extra map[string]int64 // rows created past the snapshot, per entity
	// Poison counts the events that must end as dead letters.
	Poison int
}

func (c *Changes) set(entity string, i int64, ch change) {
	if c.rows[entity] == nil {
		c.rows[entity] = map[int64]change{}
	}
	c.rows[entity][i] = ch
}

var updateMix = []struct {
	entity string
	share  float64
}{{"sites", 0.02}, {"work_centers", 0.08}, {"items", 0.30}, {"work_orders", 0.30}, {"work_order_operations", 0.30}}

// Traffic generates a burst of realtime events over the ERP's snapshot, and the
// changes it makes (ApplyTraffic makes them in the ERP). The same config and ERP
// size give the same events, whatever the ERP's current state.
func (e *ERP) Traffic(cfg TrafficConfig) ([]Event, *Changes) {
	if cfg.Start.IsZero() {
		cfg.Start = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0xa915))
	ch := &Changes{rows: map[string]map[int64]change{}, extra: map[string]int64{}}
	var events []Event
	tick := 0
	next := func() time.Time { tick++; return cfg.Start.Add(time.Duration(tick) * time.Second) }
	emit := func(op string, r Row) Event {
		data := r.Data
		if op == "delete" {
			data = map[string]any{}
			for _, k := range Keys(r.Entity) {
				data[k] = r.Data[k]
			}
		}
		body, _ := json.Marshal(map[string]any{"entity": r.Entity, "op": op, "source_system": "oracle_ifs", "rowversion": r.RowVersion, "data": data})
		return Event{Subject: "apismith.cdc." + r.Entity, Body: body}
	}
	push := func(ev Event) {
		events = append(events, ev)
		if rng.Float64() < cfg.Duplicates {
			events = append(events, ev)
		}
	}
	for len(events) < cfg.Events {
		x := rng.Float64()
		switch {
		case x < cfg.Poison:
			ch.Poison++
			entity := Entities[rng.IntN(len(Entities))]
			if rng.IntN(2) == 0 {
				events = append(events, Event{Subject: "apismith.cdc." + entity, Body: []byte(`{"entity":"` + entity + `","op":"upsert","data":`)})
			} else {
				events = append(events, Event{Subject: "apismith.cdc." + entity,
					Body: []byte(fmt.Sprintf(`{"entity":%q,"op":"upsert","rowversion":"2026-06-01T00:00:00Z","data":{"NOTE":"no key"}}`, entity))})
			}
		case x < cfg.Poison+cfg.ChildrenFirst:
			k := ch.extra["work_orders"]
			order, item := e.cfg.WorkOrders+k, e.cfg.Items+k
			ch.extra["work_orders"]++
			ch.extra["items"]++
			ch.extra["work_order_operations"] += 3
			at := next()
			for op := order * 3; op < order*3+3; op++ {
				push(emit("upsert", e.Revision("work_order_operations", op, 1, at)))
				ch.set("work_order_operations", op, change{rev: 1, at: at})
			}
			push(emit("upsert", e.Revision("work_orders", order, 1, at)))
			ch.set("work_orders", order, change{rev: 1, at: at})
			push(emit("upsert", e.Revision("items", item, 1, at)))
			ch.set("items", item, change{rev: 1, at: at})
		case x < cfg.Poison+cfg.ChildrenFirst+cfg.Deletes:
			entity, i, ok := e.deletable(rng, ch)
			if !ok {
				continue
			}
			at := next()
			push(emit("delete", e.Revision(entity, i, ch.rows[entity][i].rev+1, at)))
			ch.set(entity, i, change{rev: ch.rows[entity][i].rev + 1, at: at, deleted: true})
		default:
			entity := pick(rng)
			count, _ := e.snapshotCount(entity)
			i := rng.Int64N(count)
			cur, touched := ch.rows[entity][i]
			if cur.deleted {
				continue
			}
			if !touched {
				cur.rev = 1
			}
			at := next()
			newer := e.Revision(entity, i, cur.rev+1, at)
			if rng.Float64() < cfg.OutOfOrder {
				at := next()
				newest := e.Revision(entity, i, cur.rev+2, at)
				push(emit("upsert", newest))
				push(emit("upsert", newer))
				ch.set(entity, i, change{rev: cur.rev + 2, at: at})
				continue
			}
			push(emit("upsert", newer))
			ch.set(entity, i, change{rev: cur.rev + 1, at: at})
		}
	}
	return events, ch
}

func pick(rng *rand.Rand) string {
	x, acc := rng.Float64(), 0.0
	for _, m := range updateMix {
		if acc += m.share; x < acc {
			return m.entity
		}
	}
	return updateMix[len(updateMix)-1].entity
}

// deletable picks a row whose delete leaves no child waiting for it: an operation,
// or an item no work order uses.
func (e *ERP) deletable(rng *rand.Rand, ch *Changes) (string, int64, bool) {
	entity := "work_order_operations"
	count, _ := e.snapshotCount(entity)
	lo := int64(0)
	if rng.IntN(2) == 0 && e.cfg.Items > e.cfg.WorkOrders {
		entity, lo, count = "items", e.cfg.WorkOrders, e.cfg.Items
	}
	i := lo + rng.Int64N(count-lo)
	cur, touched := ch.rows[entity][i]
	if cur.deleted {
		return "", 0, false
	}
	if !touched {
		cur.rev = 1
		ch.set(entity, i, cur)
	}
	return entity, i, true
}

// EntityState is the expected state of one entity's target table.
type EntityState struct {
	// Rows counts the live rows (not deleted).
	Rows int64 `json:"rows"`
	// Digest is the hex SHA-256 of "key|check\n" for every live row in key order,
	// where check is the entity's CheckField.
	Digest string `json:"digest"`
}

// Expect returns the state of every entity after the snapshot and ch (nil for the
// snapshot alone). It walks every row once, in key order.
func (e *ERP) Expect(ch *Changes) map[string]EntityState {
	out := map[string]EntityState{}
	digests := map[string]*Digest{}
	for _, entity := range Entities {
		digests[entity] = NewDigest()
	}
	e.Walk(ch, func(entity, key, check string) { digests[entity].Add(key, check) })
	for entity, d := range digests {
		out[entity] = d.State()
	}
	return out
}

// Walk calls fn for every live row after the snapshot and ch, entity by entity,
// in key order: the rows a perfect sync leaves in the target.
func (e *ERP) Walk(ch *Changes, fn func(entity, key, check string)) {
	for _, entity := range Entities {
		count, _ := e.snapshotCount(entity)
		var extra int64
		var rows map[int64]change
		if ch != nil {
			extra, rows = ch.extra[entity], ch.rows[entity]
		}
		for i := int64(0); i < count+extra; i++ {
			rev := 1
			if c, ok := rows[i]; ok {
				if c.deleted {
					continue
				}
				rev = c.rev
			}
			r := e.Revision(entity, i, rev, time.Time{})
			fn(entity, r.Key, fmt.Sprint(r.Data[CheckField[entity]]))
		}
	}
}

// Digest accumulates rows in key order into an EntityState.
type Digest struct {
	h    hashWriter
	rows int64
}

type hashWriter interface {
	Write([]byte) (int, error)
	Sum([]byte) []byte
}

// NewDigest starts an empty digest.
func NewDigest() *Digest { return &Digest{h: sha256.New()} }

// Add adds one live row.
func (d *Digest) Add(key, check string) {
	d.rows++
	_, _ = d.h.Write([]byte(key + "|" + check + "\n"))
}

// State returns the digest so far.
func (d *Digest) State() EntityState {
	return EntityState{Rows: d.rows, Digest: hex.EncodeToString(d.h.Sum(nil))}
}

// Validate says what is wrong with a traffic config that Traffic cannot use.
func (cfg TrafficConfig) Validate() error {
	var errs []error
	if cfg.Events < 0 {
		errs = append(errs, fmt.Errorf("events must not be negative (got %d)", cfg.Events))
	}
	for _, s := range []struct {
		name string
		v    float64
	}{{"children_first", cfg.ChildrenFirst}, {"duplicates", cfg.Duplicates}, {"out_of_order", cfg.OutOfOrder}, {"deletes", cfg.Deletes}, {"poison", cfg.Poison}} {
		if !(s.v >= 0 && s.v <= 1) {
			errs = append(errs, fmt.Errorf("%s is a share of the events: give it between 0 and 1 (got %v)", s.name, s.v))
		}
	}
	if cfg.Deletes >= 1 && cfg.Poison+cfg.ChildrenFirst == 0 {
		errs = append(errs, errors.New("deletes must be below 1 when there is no poison and no new chains: the rows that can be deleted run out"))
	}
	return errors.Join(errs...)
}

// EventsDigest is the hex SHA-256 of a burst of events (subjects and bodies, in
// order): two ERPs that generated the same traffic give the same digest.
func EventsDigest(events []Event) string {
	h := sha256.New()
	for _, ev := range events {
		_, _ = fmt.Fprintf(h, "%s\n%d\n", ev.Subject, len(ev.Body))
		_, _ = h.Write(ev.Body)
	}
	return hex.EncodeToString(h.Sum(nil))
}
