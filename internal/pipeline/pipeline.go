package pipeline

import (
	"cmp"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
	"github.com/syncflow/syncflow/internal/normalize"
)

// Stage names where a record failed; the values are bridge.failed_records.stage_failed.
type Stage string

const (
	StageDecode        Stage = "decode"
	StageNormalization Stage = "normalization"
	StageMapping       Stage = "mapping"
	StageWrite         Stage = "write"
	StageParent        Stage = "parent"
	StageOrphan        Stage = "orphan"
	StageMaxDeliver    Stage = "max_deliver"
)

// Retried reports whether dead letters of the stage are retried by themselves:
// mapping (the rules may be fixed), write (the target may accept the row later)
// and max_deliver (the crash loop may have been transient). The bytes of a decode
// or normalization failure will fail the same way until the catalog or the
// publisher changes, and an orphan is released by its parent's arrival: those are
// retried by hand.
func (s Stage) Retried() bool {
	switch s {
	case StageMapping, StageWrite, StageMaxDeliver:
		return true
	}
	return false
}

// Outcome is what happened to one delivery.
type Outcome string

const (
	Inserted  Outcome = "inserted"
	Updated   Outcome = "updated"
	Unchanged Outcome = "unchanged"
	Stale     Outcome = "stale"
	Deleted   Outcome = "deleted"
	Parked    Outcome = "parked"
	Failed    Outcome = "failed"
)

// Delivery is one message as fetched from a stream.
type Delivery struct {
	Subject string
	// Source is the stream the message came from, and StreamSeq its sequence in it.
	Source    event.Source
	StreamSeq uint64
	Data      []byte
	// Published is when JetStream stored the message (zero when unknown).
	Published time.Time
}

// Failure is a record that cannot be applied; it becomes a dead letter.
type Failure struct {
	Index  int // into the batch's deliveries
	Stage  Stage
	Entity string
	BKHash string
	// Normalized holds the normalized fields where normalization succeeded.
	Normalized map[string]any
	Err        error
	// Parent is, for an orphan, the parent it waited for: the parent's arrival
	// releases the dead letter.
	Parent *normalize.ParentRef
}

// Candidate is a record ready to be written, once Decide agrees.
type Candidate struct {
	Index  int
	Record normalize.Record
	// Row is the mapped target row (only the key columns for a delete).
	Row map[string]any
	// PayloadHash is the SHA-256 of Row's JSON (nil for a delete).
	PayloadHash []byte
	Version     Version
}

// Version orders the versions of one key.
type Version struct {
	Ord    int64
	Source event.Source
	Seq    uint64
	Hash   []byte
}

// Compare orders two versions of one key: by rowversion; on a tie, a realtime
// version is newer than a backfill one (realtime carries every change, a backfill
// copy is a snapshot that may have been read between two changes of one second);
// within one stream, by stream sequence. It is a total order on (Ord, Source, Seq),
// so the version that wins does not depend on the order of delivery. The store's
// SQL guards (store.supersedesSQL) encode the same order.
func Compare(a, b Version) int {
	if a.Ord != b.Ord {
		return cmp.Compare(a.Ord, b.Ord)
	}
	if ra, rb := a.Source == event.Realtime, b.Source == event.Realtime; ra != rb {
		if ra {
			return 1
		}
		return -1
	}
	return cmp.Compare(a.Seq, b.Seq)
}

// Supersedes reports whether in should replace applied (see the package doc): it
// is newer, or it is the very same event with a different mapped payload (re-run
// after a mapping change).
func Supersedes(in, applied Version) bool {
	switch c := Compare(in, applied); {
	case c != 0:
		return c > 0
	default:
		return string(in.Hash) != string(applied.Hash)
	}
}

// Prepared is a batch after decode, normalize, map and collapse.
type Prepared struct {
	// Candidates holds the newest version of every key in the batch.
	Candidates []Candidate
	// Superseded lists deliveries replaced by a newer version of their key in the
	// batch. supersededKeys holds their keys (entity and hash), and
	// supersededInverted whether each counts in Inverted, for Split.
	Superseded         []int
	supersededKeys     []string
	supersededInverted []bool
	Failures           []Failure
	// Normalized and Mapped count the deliveries that passed each stage.
	Normalized, Mapped int
	// Inverted counts the realtime deliveries superseded in the batch by one
	// published before them (see Decision.Inverted).
	Inverted int
}

// Preparer runs the pure stages against one catalog and one set of rules.
type Preparer struct {
	Catalog *catalog.Catalog
	Rules   *mapping.Set
}

// Prepare decodes, normalizes and maps every delivery and collapses versions of the
// same key to the newest.
func (p Preparer) Prepare(ds []Delivery) Prepared {
	var out Prepared
	byKey := make(map[string]int, len(ds))
	var enc SortedRowJSON // each row's JSON for its payload hash, one buffer for the batch
	for i, d := range ds {
		c, f := p.one(i, d, &enc)
		if f != nil {
			out.Failures = append(out.Failures, *f)
			if f.Stage != StageDecode && f.Stage != StageNormalization {
				out.Normalized++
			}
			continue
		}
		out.Normalized++
		out.Mapped++
		key := c.Record.Entity + "\x00" + c.Record.BKHash
		if j, seen := byKey[key]; seen {
			prev := out.Candidates[j]
			newer, older := c, prev
			if Compare(c.Version, prev.Version) < 0 {
				newer, older = prev, c
			}
			inverted := newer.Version.Source == event.Realtime && older.Version.Source == event.Realtime && older.Version.Seq > newer.Version.Seq
			out.Superseded = append(out.Superseded, older.Index)
			out.supersededKeys = append(out.supersededKeys, key)
			out.supersededInverted = append(out.supersededInverted, inverted)
			out.Candidates[j] = newer
			if inverted {
				out.Inverted++
			}
			continue
		}
		byKey[key] = len(out.Candidates)
		out.Candidates = append(out.Candidates, c)
	}
	return out
}

func (p Preparer) one(i int, d Delivery, enc *SortedRowJSON) (Candidate, *Failure) {
	subjectEntity := event.SubjectEntity(d.Subject)
	if subjectEntity == "" {
		return Candidate{}, &Failure{Index: i, Stage: StageDecode,
			Err: fmt.Errorf("%w: subject %q is not %s<entity> or %s<entity>", event.ErrDecode, d.Subject, event.Realtime.SubjectPrefix, event.Backfill.SubjectPrefix)}
	}
	ev, err := event.Decode(d.Data, subjectEntity)
	if err != nil {
		return Candidate{}, &Failure{Index: i, Stage: StageDecode, Entity: subjectEntity, Err: err}
	}
	e, ok := p.Catalog.Entity(ev.Entity)
	if !ok {
		return Candidate{}, &Failure{Index: i, Stage: StageDecode, Entity: ev.Entity,
			Err: fmt.Errorf("%w: %w %q (not in the catalog)", event.ErrDecode, ErrUnknownEntity, ev.Entity)}
	}
	// A realtime event is stored seconds after its change, so its publish time
	// tells the two readings of a wall clock repeated by a DST fall-back apart; a
	// backfill copy is published hours later and gets the earlier reading.
	var published time.Time
	if d.Source == event.Realtime {
		published = d.Published
	}
	rec, err := normalize.Normalize(ev, e, p.Catalog.SourceSystem, published)
	if err != nil {
		return Candidate{}, &Failure{Index: i, Stage: StageNormalization, Entity: e.Name, Err: err}
	}
	fail := func(err error) (Candidate, *Failure) {
		return Candidate{}, &Failure{Index: i, Stage: StageMapping, Entity: e.Name, BKHash: rec.BKHash, Normalized: rec.Fields, Err: err}
	}
	isDelete := rec.Op == event.OpDelete
	row, err := p.Rules.Apply(rec, e.Key, isDelete)
	if err != nil {
		return fail(err)
	}
	for _, col := range e.Target.Key {
		if row[col] == nil {
			return fail(fmt.Errorf("%w: target key column %s is empty after mapping (map a key field to it)", mapping.ErrMapping, col))
		}
	}
	c := Candidate{Index: i, Record: rec, Row: row, Version: Version{Ord: rec.RowVersion.Ord, Source: d.Source, Seq: d.StreamSeq}}
	if !isDelete {
		body, err := enc.Encode(row) // keys sorted: a stable payload hash
		if err != nil {
			return fail(fmt.Errorf("%w: %v", mapping.ErrMapping, err))
		}
		sum := sha256.Sum256(body)
		c.PayloadHash = sum[:]
		c.Version.Hash = c.PayloadHash
	}
	return c, nil
}

// Applied is what the ledger holds for one key.
type Applied struct {
	Version Version
	Deleted bool
}

// Decision says what to do with one candidate.
type Decision struct {
	Candidate
	Outcome Outcome
	// Ledger is true when the ledger row is written (guarded by Supersedes in SQL).
	Ledger bool
	// Target is true when the target row is upserted (or deleted, for a delete).
	// Every decision that writes the ledger writes the target too, an unchanged
	// payload at a newer version included: applied is read without locks, and
	// the target row, written first, is what a newer version committed in
	// between meets (the store's one lock order; the ledger's guard decides).
	Target bool
	// Rewrite is set on a repair copy (normalize.Record.Repair) of the applied
	// rowversion and payload: the target row is written again although the
	// ledger keeps the version it holds (a realtime version wins the tie).
	Rewrite bool
	// Inverted is set on a realtime event judged stale although it was published
	// after the applied realtime version (a higher stream sequence): a later
	// change with a lower rowversion. A source clock that went back, or
	// objversions read in the wrong time zone, show this way.
	Inverted bool
}

// Decide compares every candidate with the applied version of its key (absent from
// applied when the key is new).
func Decide(cands []Candidate, applied map[string]Applied) []Decision {
	out := make([]Decision, len(cands))
	for i, c := range cands {
		a, known := applied[c.Record.BKHash]
		d := Decision{Candidate: c}
		isDelete := c.Record.Op == event.OpDelete
		switch {
		case !known && isDelete:
			d.Outcome, d.Ledger, d.Target = Deleted, true, true
		case !known:
			d.Outcome, d.Ledger, d.Target = Inserted, true, true
		case c.Record.Repair && !isDelete && !a.Deleted && c.Version.Ord == a.Version.Ord && string(c.PayloadHash) == string(a.Version.Hash):
			// The very row the ledger says was applied: the target gets it back.
			// A copy of another payload at this rowversion is a version of its
			// own, ordered as any other (below).
			d.Outcome, d.Ledger, d.Target, d.Rewrite = Updated, true, true, true
		case !Supersedes(c.Version, a.Version):
			d.Inverted = c.Version.Source == event.Realtime && a.Version.Source == event.Realtime && c.Version.Seq > a.Version.Seq
			if Compare(c.Version, a.Version) == 0 || isDelete == a.Deleted && string(c.PayloadHash) == string(a.Version.Hash) {
				d.Outcome = Unchanged
			} else {
				d.Outcome = Stale
			}
		case isDelete && a.Deleted:
			d.Outcome, d.Ledger, d.Target = Unchanged, true, true
		case isDelete:
			d.Outcome, d.Ledger, d.Target = Deleted, true, true
		case a.Deleted:
			d.Outcome, d.Ledger, d.Target = Inserted, true, true
		case string(c.PayloadHash) == string(a.Version.Hash):
			d.Outcome, d.Ledger, d.Target = Unchanged, true, true
		default:
			d.Outcome, d.Ledger, d.Target = Updated, true, true
		}
		out[i] = d
	}
	return out
}

// Counts are the per-batch counters of bridge.sync_batches.
type Counts struct {
	Fetched, Normalized, Mapped                                            int64
	Inserted, Updated, Unchanged, Stale, Deleted, Parked, Released, Failed int64
}

// Add counts one outcome.
func (c *Counts) Add(o Outcome) {
	switch o {
	case Inserted:
		c.Inserted++
	case Updated:
		c.Updated++
	case Unchanged:
		c.Unchanged++
	case Stale:
		c.Stale++
	case Deleted:
		c.Deleted++
	case Parked:
		c.Parked++
	case Failed:
		c.Failed++
	}
}

// Merge adds o's counts to c.
func (c *Counts) Merge(o Counts) {
	c.Fetched += o.Fetched
	c.Normalized += o.Normalized
	c.Mapped += o.Mapped
	c.Inserted += o.Inserted
	c.Updated += o.Updated
	c.Unchanged += o.Unchanged
	c.Stale += o.Stale
	c.Deleted += o.Deleted
	c.Parked += o.Parked
	c.Released += o.Released
	c.Failed += o.Failed
}

// Balanced reports whether every fetched delivery has exactly one outcome.
func (c Counts) Balanced() bool {
	return c.Fetched == c.Inserted+c.Updated+c.Unchanged+c.Stale+c.Deleted+c.Parked+c.Failed
}
