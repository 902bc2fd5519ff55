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

// entityMix is the share of events per entity: many operations and orders, few sites.
var entityMix = []struct {
	name  string
	share float64
	keys  int
}{
	{"sites", 0.01, 20},
	{"work_centers", 0.04, 200},
	{"items", 0.25, 20000},
	{"work_orders", 0.30, 20000},
	{"work_order_operations", 0.40, 60000},
}

var base = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// generate returns n realistic events of about 1 KiB, deterministic for seed: every
// key gets increasing versions, a share of events is published again (duplicates)
// and a share arrives after a newer version of its key (out of order). want holds
// the newest version per entity and key: the state a perfect apply ends in.
func generate(n int, seed uint64, dupShare, oooShare float64) (events []benchEvent, want map[string]map[string]int) {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	version := map[string]int{}
	want = map[string]map[string]int{}
	pad := strings.Repeat("x", 700)
	var held []benchEvent // out-of-order events waiting to be published late
	for len(events) < n {
		r := rng.Float64()
		if r < dupShare && len(events) > 0 {
			events = append(events, events[rng.IntN(len(events))])
			continue
		}
		if len(held) > 0 && rng.Float64() < 0.5 {
			events = append(events, held[0])
			held = held[1:]
			continue
		}
		pick, acc := entityMix[len(entityMix)-1], 0.0
		x := rng.Float64()
		for _, e := range entityMix {
			if acc += e.share; x < acc {
				pick = e
				break
			}
		}
		k := rng.IntN(pick.keys)
		vk := pick.name + "/" + fmt.Sprint(k)
		version[vk]++
		v := version[vk]
		ev := makeEvent(pick.name, k, v, pad)
		if want[pick.name] == nil {
			want[pick.name] = map[string]int{}
		}
		if v > want[pick.name][ev.key] {
			want[pick.name][ev.key] = v
		}
		if rng.Float64() < oooShare && v > 1 {
			// Publish this version late: the next version overtakes it.
			held = append(held, ev)
			version[vk]++
			v2 := version[vk]
			events = append(events, makeEvent(pick.name, k, v2, pad))
			want[pick.name][ev.key] = v2
			continue
		}
		events = append(events, ev)
	}
	events = append(events, held...)
	return events[:max(n, len(events))], want
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
		data = fmt.Sprintf(`"ORDER_NO":"WO%06d","OPERATION_NO":%d,"CONTRACT":"S%03d","WORK_CENTER_NO":"WC%04d","DESCRIPTION":"v%d","SETUP_HOURS":0.5,"RUN_HOURS":2.25,"STATUS":"Released"`, k/3, (k%3+1)*10, (k/3)%20, k%200, v)
	}
	body := fmt.Sprintf(`{"entity":%q,"op":"upsert","source_system":"oracle_ifs","rowversion":%q,"data":{%s,"NOTE":%q}}`, entity, rv, data, pad)
	return benchEvent{entity: entity, key: key, body: []byte(body)}
}
