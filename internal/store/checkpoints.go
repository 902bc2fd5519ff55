package store

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/syncflow/syncflow/internal/event"

	"github.com/syncflow/syncflow/internal/pipeline"
)

// The checkpoint row of an entity (bridge.erp_sync_state) is shared by every
// consumer of that entity in every replica. Writing it inside each batch's
// transaction would make them all queue behind its row lock, so committed batches
// only note their highest rowversion here, and RunCheckpoints writes the notes of
// all entities in one short statement a few times a second. The checkpoint is
// therefore never ahead of a commit, and GREATEST keeps it from going back.

type checkpointKey struct{ entity, source string }

type checkpointNote struct {
	ord      int64
	text     string
	batchUID uuid.UUID
	at       time.Time
}

type checkpoints struct {
	mu      sync.Mutex
	pending map[checkpointKey]checkpointNote
}

func newCheckpoints() *checkpoints {
	return &checkpoints{pending: map[checkpointKey]checkpointNote{}}
}

// NoteCheckpoints notes the highest committed rowversion per source system of
// entity, for the next flush (apply.Store).
func (s *Store) NoteCheckpoints(entity string, batch uuid.UUID, highs map[string]event.RowVersion) {
	s.checkpoints.note(entity, batch, highs)
}

// highest returns, per source system, the highest rowversion the ledger accepted.
func highest(ds []pipeline.Decision) map[string]event.RowVersion {
	out := map[string]event.RowVersion{}
	for _, d := range ds {
		if !d.Ledger {
			continue
		}
		src := d.Record.SourceSystem
		if h, ok := out[src]; !ok || d.Record.RowVersion.Ord > h.Ord {
			out[src] = d.Record.RowVersion
		}
	}
	return out
}

func (c *checkpoints) note(entity string, batchUID uuid.UUID, highs map[string]event.RowVersion) {
	if len(highs) == 0 {
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for src, h := range highs {
		k := checkpointKey{entity, src}
		if cur, ok := c.pending[k]; !ok || h.Ord >= cur.ord {
			c.pending[k] = checkpointNote{ord: h.Ord, text: h.Text, batchUID: batchUID, at: now}
		}
	}
}

func (c *checkpoints) take() map[checkpointKey]checkpointNote {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.pending
	c.pending = map[checkpointKey]checkpointNote{}
	return out
}

// putBack returns notes that could not be written, keeping newer ones noted since.
func (c *checkpoints) putBack(notes map[checkpointKey]checkpointNote) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, n := range notes {
		if cur, ok := c.pending[k]; !ok || n.ord > cur.ord {
			c.pending[k] = n
		}
	}
}

const checkpointSQL = `
INSERT INTO bridge.erp_sync_state AS s
    (uid, entity_name, source_system, last_sync_rowversion, rowversion_ord, last_sync_timestamp, last_batch_uid)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[], $7::uuid[])
ON CONFLICT (entity_name, source_system) DO UPDATE SET
    last_sync_rowversion = CASE WHEN s.rowversion_ord IS NULL OR excluded.rowversion_ord > s.rowversion_ord
                                THEN excluded.last_sync_rowversion ELSE s.last_sync_rowversion END,
    rowversion_ord = GREATEST(s.rowversion_ord, excluded.rowversion_ord),
    last_sync_timestamp = GREATEST(s.last_sync_timestamp, excluded.last_sync_timestamp),
    last_batch_uid = excluded.last_batch_uid`

// FlushCheckpoints writes the noted checkpoints now.
func (s *Store) FlushCheckpoints(ctx context.Context) error {
	notes := s.checkpoints.take()
	if len(notes) == 0 {
		return nil
	}
	n := len(notes)
	uids, batches := make([]uuid.UUID, 0, n), make([]uuid.UUID, 0, n)
	entities, sources, texts := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
	ords, ats := make([]int64, 0, n), make([]time.Time, 0, n)
	// A stable order: two replicas flushing at once lock the rows in the same order.
	keys := slices.SortedFunc(maps.Keys(notes), func(a, b checkpointKey) int {
		if a.entity != b.entity {
			return strings.Compare(a.entity, b.entity)
		}
		return strings.Compare(a.source, b.source)
	})
	for _, k := range keys {
		note := notes[k]
		uids = append(uids, s.NewUID())
		entities, sources, texts = append(entities, k.entity), append(sources, k.source), append(texts, note.text)
		ords, ats, batches = append(ords, note.ord), append(ats, note.at), append(batches, note.batchUID)
	}
	if _, err := s.pool.Exec(ctx, checkpointSQL, uids, entities, sources, texts, ords, ats, batches); err != nil {
		s.checkpoints.putBack(notes)
		return err
	}
	return nil
}

// RunCheckpoints flushes the noted checkpoints every interval, and once more when
// ctx ends. Failures are retried at the next tick.
func (s *Store) RunCheckpoints(ctx context.Context, interval time.Duration, log *slog.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing, warned := 0, time.Time{}
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.FlushCheckpoints(fctx); err != nil {
				log.Warn("writing checkpoints at shutdown failed; they will advance with the next batch", "err", err)
			}
			if err := s.FlushDrift(fctx); err != nil {
				log.Warn("writing the unmapped fields seen at shutdown failed", "err", err)
			}
			return nil
		case <-t.C:
			err := errors.Join(s.FlushCheckpoints(ctx), s.FlushDrift(ctx))
			switch {
			case ctx.Err() != nil:
			case err != nil:
				// Once when the writes start failing, then once a minute: an
				// outage must not flood the log twice a second.
				failing++
				if failing == 1 || time.Since(warned) >= time.Minute {
					log.Warn("writing checkpoints (and the unmapped fields seen) failed; retrying", "err", err, "failures", failing)
					warned = time.Now()
				}
			case failing > 0:
				log.Info("checkpoints written again", "failures", failing)
				failing = 0
			}
		}
	}
}
