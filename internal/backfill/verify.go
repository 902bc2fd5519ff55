package backfill

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/redact"
)

// DriftKind is one way an entity can differ from its source (see the README's
// section on verification).
type DriftKind string

const (
	// Missing: in the source, not applied (absent from the ledger, or deleted
	// there at an older rowversion).
	Missing DriftKind = "missing"
	// Stale: the source has a newer rowversion than the ledger.
	Stale DriftKind = "stale"
	// Extra: applied and not deleted, but absent from the source.
	Extra DriftKind = "extra"
	// TargetEdited: the target row differs from what the ledger says was written.
	TargetEdited DriftKind = "target-edited"
	// TargetMissing: the ledger says applied, the target row is gone.
	TargetMissing DriftKind = "target-missing"
	// Unhashed: applied before the ledger kept target hashes (migration 0006);
	// not drift, but not comparable with the target until rewritten.
	Unhashed DriftKind = "unhashed"
	// Unreadable: source rows without a usable key or rowversion (the pipeline
	// would dead-letter them too); not compared, counted as drift.
	Unreadable DriftKind = "unreadable"
)

// DriftKinds lists the kinds in report order.
var DriftKinds = []DriftKind{Missing, Stale, Extra, TargetEdited, TargetMissing, Unhashed, Unreadable}

// IsDrift reports whether rows of kind k make an entity out of sync.
func (k DriftKind) IsDrift() bool { return k != Unhashed }

// SourceKey is one source row as the comparison needs it: its key and rowversion.
type SourceKey struct {
	BKHash string
	// Key holds the canonical key values in catalog order (event.KeyValue).
	Key []string
	Ord int64
}

// DriftedKey is one row that differs.
type DriftedKey struct {
	BKHash string
	Key    []string
	Kind   DriftKind
	// LedgerOrd is the rowversion the ledger holds (0 when it holds none), and
	// Tombstone whether it holds a delete.
	LedgerOrd int64
	Tombstone bool
}

// Comparison is what a verify session found.
type Comparison struct {
	SourceRows, LedgerRows int64
	Counts                 map[DriftKind]int64
	// Samples holds up to the asked number of keys per kind, in key-hash order.
	Samples map[DriftKind][][]string
}

// VerifySession compares one entity: it takes the source's keys page by page,
// then compares them with the ledger and the ledger with the target
// (internal/store implements it with temporary tables, so that the process
// holds one page at a time whatever the entity's size).
type VerifySession interface {
	AddSource(ctx context.Context, keys []SourceKey) error
	// Compare classifies every key; call it once, after the last AddSource.
	Compare(ctx context.Context) error
	// Settle drops the missing and stale keys the ledger has caught up with
	// since Compare (their events were in flight).
	Settle(ctx context.Context) error
	// Discard drops keys of kind (extras found in the source on a second look).
	Discard(ctx context.Context, kind DriftKind, hashes []string) error
	// Summary counts the drifted keys and samples of each kind.
	Summary(ctx context.Context, samples int) (Comparison, error)
	// Drifted pages through the drifted keys of kinds, in key-hash order, after
	// the hash after ("" for the first page).
	Drifted(ctx context.Context, kinds []DriftKind, after string, limit int) ([]DriftedKey, error)
	Close(ctx context.Context)
}

// Verification is one verification of one entity, as bridge.verifications keeps it.
type Verification struct {
	UID        uuid.UUID
	Entity     string
	Trigger    string // cli or schedule
	Repair     bool
	Started    time.Time
	Finished   time.Time
	Comparison Comparison
	Published  int64
	Error      string
	Replica    string
}

// VerifyStore opens sessions and keeps the verifications.
type VerifyStore interface {
	OpenVerify(ctx context.Context, entity string) (VerifySession, error)
	RecordVerification(ctx context.Context, v Verification) error
}

// KeySource is a source that can page through keys alone and fetch rows by key.
type KeySource interface {
	Count(ctx context.Context, entity string) (int64, error)
	PageFields(ctx context.Context, entity, cursor string, limit int, fields []string) ([]SourceRow, string, bool, error)
	Lookup(ctx context.Context, entity string, keys []map[string]any) ([]SourceRow, error)
}

// Verifier compares entities with the source and repairs what differs.
type Verifier struct {
	Store     VerifyStore
	Source    KeySource
	Publisher Publisher // needed to repair
	Catalog   *catalog.Catalog
	// PageSize is the keys read per source page (default 5000).
	PageSize int
	// LookupSize is the rows fetched whole per request to repair (default 500).
	LookupSize int
	// Settle is how long a verification waits before looking again at the
	// missing and stale keys it found, for events in flight (default 2s).
	Settle time.Duration
	// NewUID makes a verification's uid (UUIDv7).
	NewUID  func() uuid.UUID
	Now     func() time.Time
	Replica string
	Logger  *slog.Logger
}

// VerifyOptions says what one verification does besides comparing.
type VerifyOptions struct {
	// Repair publishes the drifted rows (see Verify).
	Repair bool
	// DryRun, with Repair, plans the repair without publishing.
	DryRun bool
	// DeleteExtra, with Repair, publishes a delete for each extra key.
	DeleteExtra bool
	// Samples is the keys kept per kind (0: 5).
	Samples int
	// MaxPublish caps the rows a repair publishes (0: no cap); a verify night
	// passes what is left of its quota.
	MaxPublish int64
	// Trigger is cli or schedule.
	Trigger string
	// Record keeps the verification in the bridge schema.
	Record bool
}

// VerifyResult is one entity's verification.
type VerifyResult struct {
	UID        uuid.UUID
	Entity     string
	Started    time.Time
	Duration   time.Duration
	Comparison Comparison
	// Plan counts, by kind, the rows a repair publishes (or would, on a dry run).
	Plan map[DriftKind]int64
	// Published counts the rows published; Vanished the drifted keys the source
	// no longer had when their rows were fetched.
	Published, Vanished int64
	// Capped is set when MaxPublish stopped the repair short.
	Capped bool
	// Scan is the time spent reading the source's keys, Compare the time the
	// database spent comparing them (with the ledger and the target).
	Scan, Compare time.Duration
}

// Drifted reports whether the result found drift.
func (r VerifyResult) Drifted() bool {
	for k, n := range r.Comparison.Counts {
		if k.IsDrift() && n > 0 {
			return true
		}
	}
	return false
}

func (v Verifier) withDefaults() Verifier {
	v.PageSize = cmp.Or(v.PageSize, 5000)
	v.LookupSize = cmp.Or(v.LookupSize, 500)
	if v.Settle == 0 {
		v.Settle = 2 * time.Second
	}
	if v.NewUID == nil {
		v.NewUID = func() uuid.UUID { return uuid.Must(uuid.NewV7()) }
	}
	if v.Now == nil {
		v.Now = time.Now
	}
	if v.Logger == nil {
		v.Logger = slog.Default()
	}
	return v
}

// Verify compares entity with the source, in three steps. The source's keys and
// rowversions are read page by page (a projection: key fields only) into the
// session; the session compares them with the ledger and the ledger with the
// target; after Settle, the missing and stale keys the ledger has caught up with
// meanwhile are dropped, and the extra keys are looked up in the source again
// (a row created while the scan was past its key is not extra).
//
// With Repair, the drifted rows are published on the backfill stream, through
// the normal pipeline: missing and stale rows as fresh copies from the source,
// target-edited, target-missing and unhashed rows as copies marked "repair" (the
// pipeline rewrites the target at the ledger's rowversion), and, with
// DeleteExtra, a delete for each extra key.
func (v Verifier) Verify(ctx context.Context, entity string, opt VerifyOptions) (res VerifyResult, err error) {
	v = v.withDefaults()
	e, ok := v.Catalog.Entity(entity)
	if !ok {
		return res, errors.New(v.Catalog.Unknown(entity))
	}
	if opt.Repair && !opt.DryRun && v.Publisher == nil {
		return res, errors.New("verify: repairing needs a publisher")
	}
	res = VerifyResult{UID: v.NewUID(), Entity: entity, Started: v.Now(), Plan: map[DriftKind]int64{}}
	if opt.Record {
		defer func() {
			rec := Verification{UID: res.UID, Entity: entity, Trigger: cmp.Or(opt.Trigger, "cli"), Repair: opt.Repair && !opt.DryRun,
				Started: res.Started, Finished: v.Now(), Comparison: res.Comparison, Published: res.Published, Replica: v.Replica}
			if err != nil {
				rec.Error = redact.String(err.Error()) // an error may quote the source's URL
			}
			if rerr := v.Store.RecordVerification(context.WithoutCancel(ctx), rec); rerr != nil {
				err = errors.Join(err, fmt.Errorf("recording the verification: %w", rerr))
			}
		}()
	}
	s, err := v.Store.OpenVerify(ctx, entity)
	if err != nil {
		return res, err
	}
	defer s.Close(context.WithoutCancel(ctx))
	got, err := v.scan(ctx, e, s)
	if err != nil {
		return res, err
	}
	res.Scan = v.Now().Sub(res.Started)
	if err := s.Compare(ctx); err != nil {
		return res, err
	}
	res.Compare = v.Now().Sub(res.Started) - res.Scan
	if err := v.settle(ctx, e, s); err != nil {
		return res, err
	}
	samples := cmp.Or(opt.Samples, 5)
	if res.Comparison, err = s.Summary(ctx, samples); err != nil {
		return res, err
	}
	if got.unreadable > 0 {
		res.Comparison.Counts[Unreadable] = got.unreadable
		res.Comparison.Samples[Unreadable] = got.samples[:min(len(got.samples), samples)]
	}
	defer func() { res.Duration = v.Now().Sub(res.Started) }()
	if !opt.Repair {
		return res, nil
	}
	return res, v.repair(ctx, e, s, opt, &res)
}

// scanned is what a scan read besides the keys it gave the session.
type scanned struct {
	unreadable int64
	samples    [][]string // the first unreadable rows' reasons
}

// scan reads the source's keys into the session. The next page is read while
// the session takes the last one (at most two pages wait in memory).
func (v Verifier) scan(ctx context.Context, e *catalog.Entity, s VerifySession) (scanned, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make(chan []SourceKey, 1)
	var got scanned
	read := make(chan error, 1)
	go func() {
		defer close(pages)
		read <- v.readKeys(ctx, e, pages, &got)
	}()
	for keys := range pages {
		if err := s.AddSource(ctx, keys); err != nil {
			cancel()
			for range pages {
			}
			<-read
			return got, err
		}
	}
	return got, <-read
}

// readKeys pages through the source's keys (a projection: key fields only). A
// row whose key or rowversion cannot be read is counted, not compared. A
// source that keeps paging past twice the rows it counts is broken (a cursor
// that cycles): the scan stops rather than fill the database's disk.
func (v Verifier) readKeys(ctx context.Context, e *catalog.Entity, pages chan<- []SourceKey, got *scanned) error {
	count, err := v.Source.Count(ctx, e.Name)
	if err != nil {
		return fmt.Errorf("counting the rows of %s in APISmith: %w", e.Name, err)
	}
	limit := 2*count + 10*int64(v.PageSize)
	var read int64
	cursor := ""
	for {
		rows, next, more, err := v.Source.PageFields(ctx, e.Name, cursor, v.PageSize, e.Key)
		if err != nil {
			if cursor == "" {
				return fmt.Errorf("reading the keys of %s from APISmith: %w", e.Name, err)
			}
			return fmt.Errorf("reading the keys of %s from APISmith (after the page cursor %q): %w", e.Name, cursor, err)
		}
		if read += int64(len(rows)); read > limit {
			return fmt.Errorf("APISmith counts %d rows of %s but has paged %d and goes on (does its cursor cycle?): the verification stops", count, e.Name, read)
		}
		keys := make([]SourceKey, 0, len(rows))
		for _, row := range rows {
			k, err := sourceKey(e, row)
			if err != nil {
				if got.unreadable++; len(got.samples) < 5 {
					got.samples = append(got.samples, []string{err.Error()})
				}
				continue
			}
			keys = append(keys, k)
		}
		select {
		case pages <- keys:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !more {
			return nil
		}
		if next == "" || next == cursor {
			return fmt.Errorf("the source's page of %s after %q did not move its cursor (it returned %q)", e.Name, cursor, next)
		}
		cursor = next
	}
}

// sourceKey is a source row's key and rowversion, as the pipeline would read them.
func sourceKey(e *catalog.Entity, row SourceRow) (SourceKey, error) {
	key, err := keyOf(e, row.Data)
	if err != nil {
		return SourceKey{}, err
	}
	rv, err := event.ParseRowVersion(row.RowVersion, e.RowVersion, e.TimeZone, time.Time{})
	if err != nil {
		return SourceKey{}, fmt.Errorf("a source row of %s (key %s): %v", e.Name, strings.Join(key, "|"), err)
	}
	return SourceKey{BKHash: event.HashKey(key), Key: key, Ord: rv.Ord}, nil
}

func keyOf(e *catalog.Entity, data map[string]any) ([]string, error) {
	key := make([]string, len(e.Key))
	for j, f := range e.Key {
		v, ok := event.KeyValue(field(data, f))
		if !ok {
			return nil, fmt.Errorf("a source row of %s has no key field %s", e.Name, f)
		}
		if strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("a source row of %s has a NUL character in its key field %s", e.Name, f)
		}
		key[j] = v
	}
	return key, nil
}

// settle waits, drops the keys the ledger has caught up with, and looks the
// extra keys up in the source again.
func (v Verifier) settle(ctx context.Context, e *catalog.Entity, s VerifySession) error {
	behind, err := s.Drifted(ctx, []DriftKind{Missing, Stale}, "", 1)
	if err != nil {
		return err
	}
	if len(behind) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(v.Settle):
		}
		if err := s.Settle(ctx); err != nil {
			return err
		}
	}
	// Extra rows may have been created in the source after the scan passed
	// their keys; rows live in the source and deleted in the ledger may have
	// been deleted in the source since they were read. Both are looked up again:
	// an extra row found is not extra, a missing row over a tombstone not found
	// is not missing.
	if err := v.lookAgain(ctx, e, s, Extra, func(DriftedKey) bool { return true }, true); err != nil {
		return err
	}
	return v.lookAgain(ctx, e, s, Missing, func(k DriftedKey) bool { return k.Tombstone }, false)
}

// lookAgain looks the keys of kind that pick chooses up in the source, and
// discards those found (found) or those not found (!found).
func (v Verifier) lookAgain(ctx context.Context, e *catalog.Entity, s VerifySession, kind DriftKind, pick func(DriftedKey) bool, found bool) error {
	after := ""
	for {
		page, err := s.Drifted(ctx, []DriftKind{kind}, after, v.LookupSize)
		if err != nil || len(page) == 0 {
			return err
		}
		after = page[len(page)-1].BKHash
		var keys []DriftedKey
		for _, k := range page {
			if pick(k) {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			continue
		}
		rows, err := v.Source.Lookup(ctx, e.Name, lookupKeys(e, keys))
		if err != nil {
			return fmt.Errorf("looking the %s keys of %s up again: %w", kind, e.Name, err)
		}
		there := map[string]bool{}
		for _, row := range rows {
			k, err := keyOf(e, row.Data)
			if err != nil {
				return err
			}
			there[event.HashKey(k)] = true
		}
		var discard []string
		for _, k := range keys {
			if there[k.BKHash] == found {
				discard = append(discard, k.BKHash)
			}
		}
		if err := s.Discard(ctx, kind, discard); err != nil {
			return err
		}
	}
}

func lookupKeys(e *catalog.Entity, keys []DriftedKey) []map[string]any {
	out := make([]map[string]any, len(keys))
	for i, k := range keys {
		m := make(map[string]any, len(e.Key))
		for j, f := range e.Key {
			m[f] = k.Key[j]
		}
		out[i] = m
	}
	return out
}

// repair publishes the drifted rows (or, on a dry run, counts them).
func (v Verifier) repair(ctx context.Context, e *catalog.Entity, s VerifySession, opt VerifyOptions, res *VerifyResult) error {
	fetched := []DriftKind{Missing, Stale, TargetEdited, TargetMissing, Unhashed}
	for _, k := range fetched {
		res.Plan[k] = res.Comparison.Counts[k]
	}
	if opt.DeleteExtra {
		res.Plan[Extra] = res.Comparison.Counts[Extra]
	}
	if opt.DryRun {
		return nil
	}
	left := func() int {
		if opt.MaxPublish <= 0 {
			return v.LookupSize
		}
		return int(min(int64(v.LookupSize), opt.MaxPublish-res.Published))
	}
	after := ""
	for {
		limit := left()
		if limit <= 0 {
			res.Capped = true
			return nil
		}
		keys, err := s.Drifted(ctx, fetched, after, limit)
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			break
		}
		rows, err := v.Source.Lookup(ctx, e.Name, lookupKeys(e, keys))
		if err != nil {
			return fmt.Errorf("fetching the drifted rows of %s: %w", e.Name, err)
		}
		kinds := make(map[string]DriftKind, len(keys))
		for _, k := range keys {
			kinds[k.BKHash] = k.Kind
		}
		msgs := make([]Message, 0, len(rows))
		for _, row := range rows {
			key, err := keyOf(e, row.Data)
			if err != nil {
				return err
			}
			kind, asked := kinds[event.HashKey(key)]
			if !asked {
				continue // the source answered a key not asked for
			}
			m, err := repairMessage(e, row, key, kind, v.Catalog.SourceSystem, res.UID)
			if err != nil {
				return err
			}
			msgs = append(msgs, m)
		}
		if err := v.Publisher.PublishAll(ctx, msgs); err != nil {
			return fmt.Errorf("publishing the repairs of %s: %w", e.Name, err)
		}
		res.Published += int64(len(msgs))
		res.Vanished += int64(len(keys) - len(msgs))
		after = keys[len(keys)-1].BKHash
	}
	if !opt.DeleteExtra {
		return nil
	}
	after = ""
	for {
		limit := left()
		if limit <= 0 {
			res.Capped = true
			return nil
		}
		keys, err := s.Drifted(ctx, []DriftKind{Extra}, after, limit)
		if err != nil || len(keys) == 0 {
			return err
		}
		msgs := make([]Message, len(keys))
		for i, k := range keys {
			if msgs[i], err = deleteMessage(e, k, v.Catalog.SourceSystem, res.UID); err != nil {
				return err
			}
		}
		if err := v.Publisher.PublishAll(ctx, msgs); err != nil {
			return fmt.Errorf("publishing the deletes of the extra rows of %s: %w", e.Name, err)
		}
		res.Published += int64(len(msgs))
		after = keys[len(keys)-1].BKHash
	}
}

// repairMessage is a fresh source copy of a drifted row; a row whose target
// differs carries the repair mark. Its message id names the verification, so
// that JetStream's duplicate window does not drop it as an earlier copy.
func repairMessage(e *catalog.Entity, row SourceRow, key []string, kind DriftKind, sourceSystem string, uid uuid.UUID) (Message, error) {
	body, err := json.Marshal(struct {
		Entity       string          `json:"entity"`
		Op           string          `json:"op"`
		SourceSystem string          `json:"source_system"`
		RowVersion   json.RawMessage `json:"rowversion"`
		Data         map[string]any  `json:"data"`
		Repair       bool            `json:"repair,omitempty"`
	}{e.Name, "upsert", sourceSystem, row.RowVersion, row.Data, kind == TargetEdited || kind == TargetMissing || kind == Unhashed})
	if err != nil {
		return Message{}, err
	}
	return Message{Subject: event.Backfill.Subject(e.Name), ID: "verify:" + uid.String() + ":" + e.Name + ":" + event.HashKey(key), Body: body}, nil
}

// deleteMessage deletes an extra row. Its rowversion is the smallest one after
// the version the ledger holds (a microsecond later for a timestamp, a second
// for an objversion, one more for a counter): it must win over that version,
// and must not claim a time the source never stamped (the checkpoints follow the
// rowversions applied).
func deleteMessage(e *catalog.Entity, k DriftedKey, sourceSystem string, uid uuid.UUID) (Message, error) {
	rv, err := versionAfter(e, k.LedgerOrd)
	if err != nil {
		return Message{}, err
	}
	data := make(map[string]any, len(e.Key))
	for j, f := range e.Key {
		data[f] = k.Key[j]
	}
	body, err := json.Marshal(map[string]any{"entity": e.Name, "op": "delete", "source_system": sourceSystem, "rowversion": rv, "data": data})
	if err != nil {
		return Message{}, err
	}
	return Message{Subject: event.Backfill.Subject(e.Name), ID: "verify:" + uid.String() + ":" + e.Name + ":" + k.BKHash + ":delete", Body: body}, nil
}

// versionAfter is the smallest rowversion of e's form that reads back (as the
// pipeline reads a backfill copy) after ord. An objversion is a wall clock: in
// the hour a DST fall-back repeats, the next second's wall clock reads as the
// earlier instant, so the seconds go on until one reads after ord.
func versionAfter(e *catalog.Entity, ord int64) (json.RawMessage, error) {
	switch e.RowVersion {
	case event.VersionNumber:
		return json.Marshal(ord + 1)
	case event.VersionObjversion:
		at, zone := time.UnixMicro(ord), cmp.Or(e.TimeZone, time.UTC)
		for step := time.Second; step <= 3*time.Hour; step += time.Second {
			raw, _ := json.Marshal(at.Add(step).In(zone).Format("20060102150405"))
			if rv, err := event.ParseRowVersion(raw, e.RowVersion, zone, time.Time{}); err == nil && rv.Ord > ord {
				return raw, nil
			}
		}
		return nil, fmt.Errorf("no objversion of %s in %v reads after %v", e.Name, zone, at)
	default:
		return json.Marshal(time.UnixMicro(ord + 1).UTC().Format(time.RFC3339Nano))
	}
}

// FormatKey writes a key's values joined by "|", as the CLI shows them.
func FormatKey(key []string) string { return strings.Join(key, "|") }
