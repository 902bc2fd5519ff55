package pipeline

import (
	"hash/maphash"
	"slices"
)

// A Lane is the share of a prepared batch one writer takes: the deliveries of
// some keys, and what was prepared of them, indexed within the lane.
type Lane struct {
	// Indexes maps the lane's deliveries to the batch's (Deliveries[i] is the
	// batch's delivery Indexes[i]).
	Indexes    []int
	Deliveries []Delivery
	Prepared   Prepared
}

var laneSeed = maphash.MakeSeed()

// Split divides a prepared batch of deliveries ds into at most n lanes by key:
// every version of a key in the batch (its candidate and the deliveries it
// superseded) lands in the same lane, and a key lands in the same lane in every
// batch split n ways by the same process, so that writers of different lanes
// never write the same key. Deliveries that failed go to the first lane. Lanes left empty are dropped; a
// batch too small to split is one lane.
func (p Prepared) Split(ds []Delivery, n int) []Lane {
	if n <= 1 || len(p.Candidates) < 2 {
		return []Lane{{Indexes: seq(len(ds)), Deliveries: ds, Prepared: p}}
	}
	lane := make([]int, len(ds)) // by delivery; failures stay in lane 0
	of := func(key string) int { return int(maphash.String(laneSeed, key) % uint64(n)) }
	for _, c := range p.Candidates {
		lane[c.Index] = of(c.Record.Entity + "\x00" + c.Record.BKHash)
	}
	for i, idx := range p.Superseded {
		lane[idx] = of(p.supersededKeys[i])
	}
	lanes := make([]Lane, n)
	local := make([]int, len(ds)) // the delivery's index in its lane
	for i, d := range ds {
		l := &lanes[lane[i]]
		local[i] = len(l.Deliveries)
		l.Indexes = append(l.Indexes, i)
		l.Deliveries = append(l.Deliveries, d)
	}
	for _, c := range p.Candidates {
		l := &lanes[lane[c.Index]]
		c.Index = local[c.Index]
		l.Prepared.Candidates = append(l.Prepared.Candidates, c)
		l.Prepared.Normalized++
		l.Prepared.Mapped++
	}
	for i, idx := range p.Superseded {
		l := &lanes[lane[idx]]
		l.Prepared.Superseded = append(l.Prepared.Superseded, local[idx])
		l.Prepared.supersededKeys = append(l.Prepared.supersededKeys, p.supersededKeys[i])
		l.Prepared.supersededInverted = append(l.Prepared.supersededInverted, p.supersededInverted[i])
		if p.supersededInverted[i] {
			l.Prepared.Inverted++
		}
		l.Prepared.Normalized++
		l.Prepared.Mapped++
	}
	first := &lanes[0].Prepared
	for _, f := range p.Failures {
		f.Index = local[f.Index]
		first.Failures = append(first.Failures, f)
	}
	// What passed normalization (and mapping) but failed later counts where the
	// failure went.
	first.Normalized += p.Normalized - len(p.Candidates) - len(p.Superseded)
	first.Mapped += p.Mapped - len(p.Candidates) - len(p.Superseded)
	return slices.DeleteFunc(lanes, func(l Lane) bool { return len(l.Deliveries) == 0 })
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}
