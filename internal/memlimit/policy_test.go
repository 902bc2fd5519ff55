package memlimit

import "testing"

const mib = 1 << 20

// process makes the readings of a process whose collector runs ten times a
// reading, each collection after pace times the live heap was allocated.
type process struct{ allocs, cycles int64 }

func (p *process) reading(live, other, held int64, pace float64) Reading {
	p.cycles += 10
	p.allocs += int64(10 * pace * float64(live))
	return Reading{Live: live, Other: other, Held: held, GOGC: 100, Allocs: p.allocs, Cycles: p.cycles}
}

func TestPolicyKeepsTheFloorThroughSwings(t *testing.T) {
	p, proc := newPolicy(44*mib, 20), &process{}
	for n := range 200 {
		live, pace := int64(14*mib), 1.0
		if n%3 == 0 {
			live, pace = 32*mib, 0.15 // a swing: 1.5 x 32 + 8 would be 56 MiB
		}
		if limit, _ := p.next(proc.reading(live, 8*mib, 60*mib, pace)); limit != 44*mib {
			t.Fatalf("reading %d (live %d MiB): limit %d MiB, want the floor", n, live/mib, limit/mib)
		}
	}
}

// TestPolicyRaisesForALiveHeapThatDipsBetweenBatches: a live heap of 35 MiB
// that drops to nothing for one reading in eight (a batch done, the next not
// begun) is large most of the time, and gets its room.
func TestPolicyRaisesForALiveHeapThatDipsBetweenBatches(t *testing.T) {
	p, proc := newPolicy(44*mib, 20), &process{}
	var limit int64
	for n := range 100 {
		live := int64(35 * mib)
		if n%8 == 7 {
			live = 0
		}
		limit, _ = p.next(proc.reading(live, 8*mib, 60*mib, 0.15))
	}
	if limit != 60*mib+mib/2 {
		t.Fatalf("a live heap of 35 MiB with a dip in every eighth reading: limit %.1f MiB, want 60.5 (35 + 17.5 + 8)", float64(limit)/mib)
	}
}

func TestPolicyRaisesForALiveHeapThatStays(t *testing.T) {
	p, proc := newPolicy(44*mib, 20), &process{}
	for range 10 {
		p.next(proc.reading(10*mib, 8*mib, 30*mib, 1))
	}
	// The lower quartile of 20 readings is the sixth smallest: the raise comes
	// once 15 of the window's readings are of the large heap.
	for n := 10; n < 24; n++ {
		if limit, _ := p.next(proc.reading(40*mib, 8*mib, 60*mib, 0.5)); limit != 44*mib {
			t.Fatalf("reading %d, %d readings into a large heap: limit %d MiB, want the floor until most of the window is large", n, n-9, limit/mib)
		}
	}
	if limit, _ := p.next(proc.reading(40*mib, 8*mib, 60*mib, 0.5)); limit != 68*mib {
		t.Fatalf("15 readings into a live heap of 40 MiB: limit %d MiB, want 68 (40 + 20 + 8)", limit/mib)
	}
	// Gone: the limit comes down once more than a quarter of the window is small
	// (the five small readings before the large heap are still in it).
	for n := 1; n <= 6; n++ {
		want := int64(68 * mib)
		if n == 6 {
			want = 44 * mib
		}
		if limit, _ := p.next(proc.reading(12*mib, 8*mib, 60*mib, 1)); limit != want {
			t.Fatalf("%d readings after the large heap: limit %d MiB, want %d", n, limit/mib, want/mib)
		}
	}
}

func TestPolicyFollowsGOGC(t *testing.T) {
	for _, c := range []struct{ gogc, want int64 }{{100, 68}, {400, 128}, {50, 58}, {-1, 68}} {
		p := newPolicy(44*mib, 1)
		r := (&process{}).reading(40*mib, 8*mib, 60*mib, 1)
		r.GOGC = c.gogc
		if limit, _ := p.next(r); limit != c.want*mib {
			t.Errorf("GOGC %d: limit %d MiB, want %d", c.gogc, limit/mib, c.want)
		}
	}
}

func TestPolicyRaisesWhenTheCollectorRunsAllTheTime(t *testing.T) {
	p, proc := newPolicy(44*mib, 20), &process{}
	live := int64(10 * mib)
	step := func(pace float64, held int64) (int64, bool) { return p.next(proc.reading(live, 8*mib, held, pace)) }
	for range 10 {
		if limit, raised := step(0.2, 44*mib); limit != 44*mib || raised {
			t.Fatalf("collections after a fifth of the live heap: limit %d MiB (raised %v), want the floor", limit/mib, raised)
		}
	}
	// From here the live heap is 30 MiB and a collection comes after 2 % of
	// it: within the smoothing readings, the limit goes to 1.5 x what the
	// runtime holds.
	live = 30 * mib
	var limit int64
	var raised bool
	for range smoothing {
		if limit, raised = step(0.02, 46*mib); raised {
			break
		}
	}
	if !raised || limit != 69*mib {
		t.Fatalf("collections after 2%% of the live heap: limit %d MiB (raised %v), want 69 (1.5 x 46)", limit/mib, raised)
	}
	// The heap small again, and the collector at its usual pace: the raise
	// lasts a window, then the floor.
	live = 10 * mib
	for i := 0; ; i++ {
		limit, _ = step(1, 60*mib)
		if limit == 44*mib {
			if i < 15 {
				t.Fatalf("the raise lasted %d readings, want about a window (20)", i)
			}
			break
		}
		if i > 30 {
			t.Fatalf("the raise never ended: limit %d MiB", limit/mib)
		}
	}
}

func TestPolicyIgnoresARareCollection(t *testing.T) {
	p := newPolicy(44*mib, 20)
	for n := range 50 {
		// A process at rest: a collection now and then, after little was allocated.
		r := Reading{Live: 5 * mib, Other: 8 * mib, Held: 20 * mib, GOGC: 100, Allocs: int64(n) * 1024, Cycles: int64(n / 4)}
		if limit, raised := p.next(r); limit != 44*mib || raised {
			t.Fatalf("reading %d of an idle process: limit %d MiB, raised %v", n, limit/mib, raised)
		}
	}
}

func TestReadingOfTheRuntime(t *testing.T) {
	keep := make([]byte, 64*mib)
	for i := range keep {
		keep[i] = 1
	}
	r := newReader().read()
	_ = keep[len(keep)-1]
	if r.Held < 64*mib || r.Other <= 0 || r.Other >= r.Held || r.GOGC != 100 || r.Allocs < 64*mib || r.Cycles < 0 {
		t.Errorf("a reading with 64 MiB allocated: %+v", r)
	}
}
