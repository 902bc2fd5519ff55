package storetest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// The parked children (bridge.pending_children): one row per child key, with the
// event's bytes as received. Rows are kept by child key, the table's unique key.

type parkedRow struct {
	UID, Batch             uuid.UUID
	Child, Parent          apply.Key
	ParentKey              []string
	Raw                    []byte
	RowVersion             string
	Version                pipeline.Version
	Stream, Subject        string
	Published              time.Time
	Retries, MaxRetries    int
	Next, Created, Updated time.Time
}

// delivery is the row's event as a fresh delivery.
func (p parkedRow) delivery() pipeline.Delivery {
	return pipeline.Delivery{Subject: p.Subject, Source: p.Version.Source, StreamSeq: p.Version.Seq, Data: p.Raw, Published: p.Published}
}

func (p parkedRow) meta() deadletter.Parked {
	return deadletter.Parked{UID: p.UID, Child: p.Child, Parent: p.Parent, ParentKey: jsonbArray(p.ParentKey), Retries: p.Retries,
		MaxRetries: p.MaxRetries, Created: p.Created, Size: int64(len(p.Raw))}
}

// jsonbArray writes a key as PostgreSQL writes a jsonb array of strings.
func jsonbArray(key []string) string {
	parts := make([]string, len(key))
	for i, k := range key {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(k)
		parts[i] = strings.TrimSuffix(b.String(), "\n")
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// parkedBy returns the parked rows that keep says, in uid order.
func (s *state) parkedBy(keep func(parkedRow) bool) []parkedRow {
	var out []parkedRow
	for _, p := range s.parked {
		if keep(p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b parkedRow) int { return compareUID(a.UID, b.UID) })
	return out
}

func (s *state) parkedByUID(uids []uuid.UUID) []parkedRow {
	want := make(map[uuid.UUID]bool, len(uids))
	for _, u := range uids {
		want[u] = true
	}
	return s.parkedBy(func(p parkedRow) bool { return want[p.UID] })
}

// Park writes parked rows, one per child key: a version that does not supersede
// the one parked is refused; a newer one replaces it (new parent, event and
// version; its re-checks start again, its uid, creation and max_retries stay). It
// returns the child hashes written.
func (t *tx) Park(ctx context.Context, batch uuid.UUID, entity string, rows []apply.ParkRow, firstRetry time.Duration, maxRetries int) (map[string]bool, error) {
	if err := t.stmt(ctx); err != nil {
		return nil, err
	}
	accepted := map[string]bool{}
	if len(rows) == 0 {
		return accepted, nil
	}
	if err := t.needBatch(batch, "pending_children"); err != nil {
		return nil, t.fail(err)
	}
	for _, r := range rows {
		if err := t.m.breakParked[r.Child.BKHash]; err != nil {
			return nil, t.fail(err)
		}
		if !validSource(r.Version.Source.Name) {
			return nil, t.fail(rejected("new row for pending_children violates check constraint: source_stream %q", r.Version.Source.Name))
		}
	}
	for _, r := range rows {
		if accepted[r.Child.BKHash] {
			return nil, t.fail(secondTime("child " + r.Child.BKHash))
		}
		k := apply.Key{Entity: entity, Hash: r.Child.BKHash}
		p := parkedRow{UID: t.m.NewUID(), Batch: batch, Child: k, Parent: apply.Key{Entity: r.Parent.Entity, Hash: r.Parent.BKHash},
			ParentKey: slices.Clone(r.Parent.Key), Raw: r.Delivery.Data, RowVersion: r.Child.RowVersion.Text,
			Version: stored(r.Version, r.Child.RowVersion.Ord), Stream: r.Delivery.Source.Stream, Subject: text(r.Delivery.Subject),
			Published: r.Delivery.Published, MaxRetries: maxRetries, Next: t.now.Add(firstRetry), Created: t.now, Updated: t.now}
		if old, ok := t.st.parked[k]; ok {
			if !pipeline.Supersedes(p.Version, old.Version) {
				continue
			}
			p.UID, p.MaxRetries, p.Created = old.UID, old.MaxRetries, old.Created
		}
		t.st.parked[k] = p
		accepted[r.Child.BKHash] = true
	}
	return accepted, nil
}

func validSource(name string) bool { return name == event.Realtime.Name || name == event.Backfill.Name }

// TakeReleased takes out of the queue, in uid order and within the bounds, the
// children waiting for parents that are applied, and the unresolved orphan dead
// letters that name them (the store's releaseChildrenSQL and releaseOrphansSQL).
func (t *tx) TakeReleased(ctx context.Context, parents []apply.Key, limit, maxBytes int) ([]apply.Released, bool, error) {
	if err := t.stmt(ctx); err != nil {
		return nil, false, err
	}
	want := keySet(parents)
	locked := first(t.st.parkedBy(func(p parkedRow) bool { return want[p.Parent] && t.st.present(p.Parent) }), limit)
	chunk := withinBytes(locked, maxBytes, func(p parkedRow) int { return len(p.Raw) })
	var items []apply.Released
	for _, p := range chunk {
		delete(t.st.parked, p.Child)
		items = append(items, apply.Released{UID: p.UID, Delivery: p.delivery()})
	}
	orphansLocked := first(t.st.failedBy(func(f failedRow) bool { return f.releasable(t.st) && want[*f.Parent] }), limit)
	orphans := withinBytes(orphansLocked, maxBytes, func(f failedRow) int { return len(f.Raw) })
	for _, f := range orphans {
		items = append(items, apply.Released{Orphan: true, UID: f.UID, Delivery: f.delivery()})
	}
	// The store counts the rows locked from the rows it returns.
	parkedLocked, orphanLocked := len(locked), len(orphansLocked)
	if len(chunk) == 0 {
		parkedLocked = 0
	}
	if len(orphans) == 0 {
		orphanLocked = 0
	}
	more := parkedLocked >= limit || len(chunk) < parkedLocked || orphanLocked >= limit || len(orphans) < orphanLocked
	return items, more, nil
}

// first returns at most limit of rows (LIMIT).
func first[T any](rows []T, limit int) []T {
	return rows[:min(len(rows), max(limit, 0))]
}

// withinBytes returns the rows whose predecessors hold less than maxBytes: at
// least one, as the store's windowed sums choose them.
func withinBytes[T any](rows []T, maxBytes int, size func(T) int) []T {
	before := 0
	for i, r := range rows {
		if before >= maxBytes {
			return rows[:i]
		}
		before += size(r)
	}
	return rows
}

// MarkDue makes the children waiting for parents due now.
func (t *tx) MarkDue(ctx context.Context, parents []apply.Key) error {
	if err := t.stmt(ctx); err != nil {
		return err
	}
	want := keySet(parents)
	for k, p := range t.st.parked {
		if want[p.Parent] && p.Next.After(t.now) {
			p.Next, p.Updated = t.now, t.now
			t.st.parked[k] = p
		}
	}
	return nil
}

// SelectParked returns the parked children sel chooses, as the store's sweep
// statements choose them.
func (t *tx) SelectParked(ctx context.Context, sel deadletter.ParkedSelection, limit int) ([]deadletter.Parked, error) {
	if err := t.stmt(ctx); err != nil {
		return nil, err
	}
	var rows []parkedRow
	switch {
	case len(sel.UIDs) > 0:
		rows = t.st.parkedByUID(sel.UIDs)
	case sel.Expire && sel.OlderThan > 0:
		rows = t.st.parkedBy(func(p parkedRow) bool { return !p.Created.After(t.now.Add(-sel.OlderThan)) })
		slices.SortStableFunc(rows, func(a, b parkedRow) int { return a.Created.Compare(b.Created) })
		rows = first(rows, limit)
	case sel.All || sel.Expire:
		rows = first(t.st.parkedBy(func(parkedRow) bool { return true }), limit)
	default:
		rows = t.st.parkedBy(func(p parkedRow) bool { return !p.Next.After(t.now) })
		slices.SortStableFunc(rows, func(a, b parkedRow) int { return a.Next.Compare(b.Next) })
		rows = first(rows, limit)
	}
	out := make([]deadletter.Parked, len(rows))
	for i, p := range rows {
		out[i] = p.meta()
	}
	return out, nil
}

// WaitParked counts one more re-check of each row and sets its next after its
// delay.
func (t *tx) WaitParked(ctx context.Context, uids []uuid.UUID, delays []time.Duration) error {
	if err := t.stmt(ctx); err != nil {
		return err
	}
	delay := make(map[uuid.UUID]time.Duration, len(uids))
	for i, u := range uids {
		delay[u] = delays[i]
	}
	for _, p := range t.st.parkedByUID(uids) {
		p.Retries++
		p.Next, p.Updated = t.now.Add(delay[p.UID]), t.now
		t.st.parked[p.Child] = p
	}
	return nil
}

// OrphanParked moves parked rows into the dead letters at stage orphan, with their
// events as received and the parent they waited for; a message with an
// unresolved dead letter updates it. It returns the dead letters as written.
func (t *tx) OrphanParked(ctx context.Context, batch apply.BatchRow, orphans []deadletter.Orphan, maxRetries int) ([]apply.DeadLetter, error) {
	if err := t.stmt(ctx); err != nil {
		return nil, err
	}
	byUID := make(map[uuid.UUID]deadletter.Orphan, len(orphans))
	for _, o := range orphans {
		if _, seen := byUID[o.UID]; !seen {
			byUID[o.UID] = o
		}
	}
	gone := t.st.parkedBy(func(p parkedRow) bool { _, ok := byUID[p.UID]; return ok })
	if len(gone) == 0 {
		return nil, nil
	}
	if err := t.needBatch(batch.UID, "failed_records"); err != nil {
		return nil, t.fail(err)
	}
	var out []apply.DeadLetter
	for _, p := range gone {
		delete(t.st.parked, p.Child)
		o := byUID[p.UID]
		parent := p.Parent
		f := failedRow{UID: o.DeadLetterUID, Batch: &batch.UID, Entity: p.Child.Entity, SourceSystem: batch.SourceSystem,
			Source: p.Version.Source.Name, Stream: &p.Stream, Seq: p.Version.Seq, Subject: p.Subject, BKHash: p.Child.Hash,
			Raw: p.Raw, Stage: string(pipeline.StageOrphan), Error: o.Reason, MaxRetries: maxRetries, Parent: &parent,
			Published: p.Published, Created: t.now, Updated: t.now}
		written := t.st.addFailure(f, t.now)
		stream := ""
		if written.Stream != nil {
			stream = *written.Stream
		}
		src, _ := event.SourceOfStream(stream)
		out = append(out, apply.DeadLetter{Failure: pipeline.Failure{Stage: pipeline.StageOrphan, Entity: written.Entity, Err: textError(written.Error)},
			Delivery: pipeline.Delivery{Source: src, StreamSeq: written.Seq}})
	}
	return out, nil
}

// TakeParked takes rows out of the queue, with their events.
func (t *tx) TakeParked(ctx context.Context, uids []uuid.UUID) ([]apply.Released, error) {
	if len(uids) == 0 {
		return nil, nil // as the store: no statement
	}
	if err := t.stmt(ctx); err != nil {
		return nil, err
	}
	var items []apply.Released
	for _, p := range t.st.parkedByUID(uids) {
		delete(t.st.parked, p.Child)
		items = append(items, apply.Released{UID: p.UID, Delivery: p.delivery()})
	}
	return items, nil
}

// TakeReleasableOrphans returns the unresolved orphan dead letters whose parent is
// applied, within the bounds.
func (t *tx) TakeReleasableOrphans(ctx context.Context, limit, maxBytes int) ([]apply.Released, bool, error) {
	if err := t.stmt(ctx); err != nil {
		return nil, false, err
	}
	locked := first(t.st.failedBy(func(f failedRow) bool { return f.releasable(t.st) }), limit)
	chosen := withinBytes(locked, maxBytes, func(f failedRow) int { return len(f.Raw) })
	items := make([]apply.Released, len(chosen))
	for i, f := range chosen {
		items[i] = apply.Released{Orphan: true, UID: f.UID, Delivery: f.delivery()}
	}
	n := len(locked)
	if len(chosen) == 0 {
		n = 0 // the store counts the rows locked from the rows it returns
	}
	return items, n >= limit || len(items) < n, nil
}

// ParkedChildren returns the rows parked for children.
func (t *tx) ParkedChildren(ctx context.Context, children []apply.Key) ([]deadletter.Parked, error) {
	if len(children) == 0 {
		return nil, nil // as the store: no statement
	}
	if err := t.stmt(ctx); err != nil {
		return nil, err
	}
	want := keySet(children)
	var out []deadletter.Parked
	for _, p := range t.st.parkedBy(func(p parkedRow) bool { return want[p.Child] }) {
		out = append(out, p.meta())
	}
	return out, nil
}

// textError is an error that is its text (a reason read back from the table).
type textError string

func (e textError) Error() string { return string(e) }

// compareUID orders rows by uid, as PostgreSQL orders uuids.
func compareUID(a, b uuid.UUID) int { return cmp.Compare(string(a[:]), string(b[:])) }
