package apply

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// deadLetterLogBurst is how many dead letters are logged one by one in a second;
// the rest of that second is summed up in one line.
const deadLetterLogBurst = 20

// deadLetterLog logs committed dead letters: one warning each, rate-limited to a
// summary line when many arrive at once.
type deadLetterLog struct {
	log *slog.Logger

	mu         sync.Mutex
	window     time.Time
	logged     int
	suppressed map[string]int // by "entity stage"
	flushing   bool
}

func (l *deadLetterLog) note(d DeadLetter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.window) >= time.Second {
		l.window, l.logged = now, 0
	}
	if l.logged < deadLetterLogBurst {
		l.logged++
		l.log.Warn("dead letter", "stage", string(d.Stage), "entity", d.Entity, "stream", d.Delivery.Source.Stream,
			"stream_seq", d.Delivery.StreamSeq, "reason", d.Err.Error())
		return
	}
	if l.suppressed == nil {
		l.suppressed = map[string]int{}
	}
	l.suppressed[d.Entity+" "+string(d.Stage)]++
	if !l.flushing {
		l.flushing = true
		time.AfterFunc(time.Until(l.window.Add(time.Second)), l.flush)
	}
}

// flush logs the dead letters the last window did not log one by one.
func (l *deadLetterLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	total := 0
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l.suppressed)) {
		total += l.suppressed[k]
		parts = append(parts, fmt.Sprintf("%s: %d", k, l.suppressed[k]))
	}
	if total > 0 {
		l.log.Warn("more dead letters than are logged one by one; see `syncflow dlq list`", "count", total, "by_entity_stage", strings.Join(parts, ", "))
	}
	l.suppressed, l.flushing = nil, false
}
