package storetest

import (
	"bytes"
	"context"
	"slices"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/pipeline"
)

// The ledger (bridge.synced_records): one row per entity and key hash, with the
// version applied and a tombstone flag.

type ledgerRow struct {
	Key        []string
	RowVersion string
	Version    pipeline.Version
	Deleted    bool
	Batch      uuid.UUID
}

// ReadLedger reads the ledger rows of entity's keys; a key without a row is
// absent. Which of parents are applied comes with it.
func (t *tx) ReadLedger(ctx context.Context, entity string, hashes []string, parents []apply.Key) (map[string]pipeline.Applied, map[apply.Key]bool, error) {
	applied := make(map[string]pipeline.Applied, len(hashes))
	if len(hashes) == 0 && len(parents) == 0 {
		return applied, map[apply.Key]bool{}, nil // as the store: no statement
	}
	if err := t.stmt(ctx); err != nil {
		return nil, nil, err
	}
	for _, h := range hashes {
		if r, ok := t.st.ledger[apply.Key{Entity: entity, Hash: h}]; ok {
			applied[h] = pipeline.Applied{Version: r.Version, Deleted: r.Deleted}
		}
	}
	present, err := t.ParentsPresent(ctx, parents)
	return applied, present, err
}

// ParentsPresent says which keys are applied: in the ledger and not deleted.
func (t *tx) ParentsPresent(ctx context.Context, keys []apply.Key) (map[apply.Key]bool, error) {
	if err := t.stmt(ctx); err != nil {
		return nil, err
	}
	present := map[apply.Key]bool{}
	for _, k := range keys {
		if t.st.present(k) {
			present[k] = true
		}
	}
	return present, nil
}

// WriteLedger writes each row where the key is new or the row supersedes the one
// there (pipeline.Supersedes, the store's supersedesSQL), and returns the hashes
// written. As one INSERT ... ON CONFLICT, it fails on a key it has written already.
func (t *tx) WriteLedger(ctx context.Context, entity string, batch uuid.UUID, rows []apply.LedgerRow) (map[string]bool, error) {
	if err := t.stmt(ctx); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return map[string]bool{}, nil
	}
	// The ledger's batch is a hint, not a foreign key: a ledger row outlives the
	// batch that wrote it, which prune may drop (migration 0005).
	accepted := map[string]bool{}
	for _, r := range rows {
		if accepted[r.Record.BKHash] {
			return nil, t.fail(secondTime("ledger key " + r.Record.BKHash))
		}
		k, v := apply.Key{Entity: entity, Hash: r.Record.BKHash}, stored(r.Version, r.Record.RowVersion.Ord)
		if old, ok := t.st.ledger[k]; ok && !pipeline.Supersedes(v, old.Version) {
			continue
		}
		if t.m.outrun[r.Record.BKHash] {
			delete(t.m.outrun, r.Record.BKHash)
			continue
		}
		t.st.ledger[k] = ledgerRow{Key: slices.Clone(r.Record.Key), RowVersion: r.Record.RowVersion.Text, Version: v,
			Deleted: r.Deleted, Batch: batch}
		accepted[r.Record.BKHash] = true
	}
	return accepted, nil
}

// stored is a version as the store keeps it and reads it back: the record's
// rowversion ordinal, and the source by its name.
func stored(v pipeline.Version, ord int64) pipeline.Version {
	return pipeline.Version{Ord: ord, Source: event.SourceNamed(v.Source.Name), Seq: v.Seq, Hash: slices.Clone(v.Hash)}
}

// secondTime is PostgreSQL's answer (21000) to an INSERT ... ON CONFLICT DO
// UPDATE whose row meets a row the same statement inserted or updated: only then,
// so a key twice whose versions are both refused by the guard is no error.
func secondTime(what string) error {
	return rejected("ON CONFLICT DO UPDATE command cannot affect row a second time (%s)", what)
}

// Write upserts the target rows, then writes the ledger rows as WriteLedger
// does, then deletes the target rows of the deletes whose ledger rows it wrote,
// as the store's statements do: an upserted target row is written even when its
// ledger row is refused (the caller rolls back), a delete is not; a repair
// rewrite counts as written where the ledger still holds its version. The
// release, when asked for, goes last, as TakeReleased.
func (t *tx) Write(ctx context.Context, entity string, batch uuid.UUID, rows []apply.WriteRow, release *apply.ReleaseAfter) (apply.Written, error) {
	written, err := t.write(ctx, entity, batch, rows)
	if err != nil || release == nil {
		return apply.Written{Hashes: written}, err
	}
	items, more, err := t.TakeReleased(ctx, release.Parents, release.Limit, release.MaxBytes)
	return apply.Written{Hashes: written, Released: items, More: more}, err
}

func (t *tx) write(ctx context.Context, entity string, batch uuid.UUID, rows []apply.WriteRow) (map[string]bool, error) {
	var targets []apply.TargetRow
	ledger := make([]apply.LedgerRow, len(rows))
	for i, r := range rows {
		ledger[i] = r.LedgerRow
		if r.Target && !r.Deleted {
			targets = append(targets, apply.TargetRow{BKHash: r.Record.BKHash, Row: r.Row})
		}
	}
	if err := t.WriteTarget(ctx, entity, targets, nil); err != nil {
		return nil, err
	}
	written, err := t.WriteLedger(ctx, entity, batch, ledger)
	if err != nil {
		return nil, err
	}
	var deletes []map[string]any
	for _, r := range rows {
		if r.Target && r.Deleted && written[r.Record.BKHash] {
			deletes = append(deletes, r.Row)
		}
		// A rewrite counts where the ledger still holds the version rewritten.
		if old, ok := t.st.ledger[apply.Key{Entity: entity, Hash: r.Record.BKHash}]; r.Rewrite && ok && !old.Deleted &&
			old.Version.Ord == r.Record.RowVersion.Ord && bytes.Equal(old.Version.Hash, r.Version.Hash) {
			written[r.Record.BKHash] = true
		}
	}
	return written, t.WriteTarget(ctx, entity, nil, deletes)
}
