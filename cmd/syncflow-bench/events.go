package main

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// benchEvent is one generated change event.
type benchEvent struct {
	entity string
	key    string // the business key, for the expected state
	body   []byte
}

type mixShare struct {
	name  string
	share float64
	keys  int
}

// entityMix is the share of events per entity: many operations and orders, few sites.
var entityMix = []mixShare{
	{"sites", 0.01, 20},
	{"work_centers", 0.04, 200},
	{"items", 0.25, 20000},
	{"work_orders", 0.30, 20000},
	{"work_order_operations", 0.40, 60000},
}

var base = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// generator produces the events; it keeps every child's parents in the stream (a
// parent first seen through its child is published right after the child, so a
// share of children arrive before their parents and are parked).
type generator struct {
	rng      *rand.Rand
	version  map[string]int
	want     map[string]map[string]int
	events   []benchEvent
	pad      string
	dupShare float64
	oooShare float64
	held     []benchEvent
	mix      []mixShare
}

// generate returns about n realistic events of about 1 KiB, deterministic for
// seed: every key gets increasing versions, a share of events is published again
// (duplicates) and a share arrives after a newer version of its key (out of
// order). want holds the newest version per entity and key: the state a perfect
// apply ends in.
func generate(n int, seed uint64, dupShare, oooShare float64) ([]benchEvent, map[string]map[string]int) {
	g := &generator{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), version: map[string]int{}, want: map[string]map[string]int{},
		pad: strings.Repeat("x", 700), dupShare: dupShare, oooShare: oooShare, mix: entityMix}
	for k := range 20 {
		g.change("sites", k)
	}
	for k := range 200 {
		g.change("work_centers", k)
	}
	return g.fill(n)
}

// generateItems returns about n events of items alone (an entity with no
// parents), with the same duplicates and versions out of order.
func generateItems(n int, seed uint64, dupShare, oooShare float64) ([]benchEvent, map[string]map[string]int) {
	items := entityMix[2]
	items.share = 1
	g := &generator{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), version: map[string]int{}, want: map[string]map[string]int{},
		pad: strings.Repeat("x", 700), dupShare: dupShare, oooShare: oooShare, mix: []mixShare{items}}
	return g.fill(n)
}

// fill generates events of the generator's mix until there are n.
func (g *generator) fill(n int) ([]benchEvent, map[string]map[string]int) {
	dupShare := g.dupShare
	for len(g.events) < n {
		if g.rng.Float64() < dupShare && len(g.events) > 0 {
			g.events = append(g.events, g.events[g.rng.IntN(len(g.events))])
			continue
		}
		if len(g.held) > 0 && g.rng.Float64() < 0.5 {
			g.events = append(g.events, g.held[0])
			g.held = g.held[1:]
			continue
		}
		pick, acc := g.mix[len(g.mix)-1], 0.0
		x := g.rng.Float64()
		for _, e := range g.mix {
			if acc += e.share; x < acc {
				pick = e
				break
			}
		}
		g.change(pick.name, g.rng.IntN(pick.keys))
	}
	g.events = append(g.events, g.held...)
	return g.events, g.want
}

// change publishes a new version of one row, then any parent it needs that was
// never published.
func (g *generator) change(entity string, k int) {
	vk := entity + "/" + fmt.Sprint(k)
	g.version[vk]++
	v := g.version[vk]
	ev := makeEvent(entity, k, v, g.pad)
	if g.want[entity] == nil {
		g.want[entity] = map[string]int{}
	}
	g.want[entity][ev.key] = v
	if g.rng.Float64() < g.oooShare && v > 1 {
		// This version is published late: the next one overtakes it.
		g.held = append(g.held, ev)
		g.version[vk]++
		g.want[entity][ev.key] = v + 1
		ev = makeEvent(entity, k, v+1, g.pad)
	}
	g.events = append(g.events, ev)
	switch entity {
	case "work_orders":
		g.ensure("items", k)
	case "work_order_operations":
		g.ensure("work_orders", k/3)
	}
}

func (g *generator) ensure(entity string, k int) {
	if g.version[entity+"/"+fmt.Sprint(k)] == 0 {
		g.change(entity, k)
	}
}

func makeEvent(entity string, k, v int, pad string) benchEvent {
	rv := base.Add(time.Duration(v) * time.Second).Format(time.RFC3339)
	var data, key string
	switch entity {
	case "sites":
		key = fmt.Sprintf("S%03d", k)
		data = fmt.Sprintf(`"CONTRACT":%q,"DESCRIPTION":"v%d","COMPANY":"ACME","TIME_ZONE":"Europe/Stockholm"`, key, v)
	case "work_centers":
		key = fmt.Sprintf("S%03d|WC%04d", k%20, k)
		data = fmt.Sprintf(`"CONTRACT":"S%03d","WORK_CENTER_NO":"WC%04d","DESCRIPTION":"v%d","WORK_CENTER_CODE":"M","CAPACITY_HOURS":16`, k%20, k, v)
	case "items":
		key = fmt.Sprintf("P%06d", k)
		rv = base.Add(time.Duration(v) * time.Second).Format("20060102150405")
		data = fmt.Sprintf(`"PART_NO":%q,"DESCRIPTION":"v%d","UNIT_MEAS":"pcs","PART_STATUS":"A","LEAD_TIME_DAYS":%d`, key, v, k%30)
	case "work_orders":
		key = fmt.Sprintf("WO%06d", k)
		data = fmt.Sprintf(`"ORDER_NO":%q,"CONTRACT":"S%03d","PART_NO":"P%06d","LOT_SIZE":%d,"STATUS":"v%d","NEED_DATE":"2026-12-%02d"`, key, k%20, k, k%50+1, v, k%28+1)
	case "work_order_operations":
		key = fmt.Sprintf("WO%06d|%d", k/3, (k%3+1)*10)
		wc := k % 200
		data = fmt.Sprintf(`"ORDER_NO":"WO%06d","OPERATION_NO":%d,"CONTRACT":"S%03d","WORK_CENTER_NO":"WC%04d","DESCRIPTION":"v%d","SETUP_HOURS":0.5,"RUN_HOURS":2.25,"STATUS":"Released"`, k/3, (k%3+1)*10, wc%20, wc, v)
	}
	body := fmt.Sprintf(`{"entity":%q,"op":"upsert","source_system":"oracle_ifs","rowversion":%q,"data":{%s,"NOTE":%q}}`, entity, rv, data, pad)
	return benchEvent{entity: entity, key: key, body: []byte(body)}
}
