package store

// The operator side of bridge.pending_children: parked children chosen by filter,
// listed and counted.

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// ParkedInfo is one parked child as operators see it.
type ParkedInfo struct {
	UID          uuid.UUID       `json:"uid"`
	Child        string          `json:"child_entity"`
	ChildBKHash  string          `json:"child_bk_hash"`
	Parent       string          `json:"parent_entity"`
	ParentKey    json.RawMessage `json:"parent_key"`
	RowVersion   string          `json:"child_rowversion"`
	RetryCount   int             `json:"retry_count"`
	MaxRetries   int             `json:"max_retries"`
	NextRetryAt  time.Time       `json:"next_retry_at"`
	CreatedAt    time.Time       `json:"created_at"`
	ChildPayload json.RawMessage `json:"child_payload,omitempty"`
}

// ParkedFilter chooses parked children for the operator commands (parked list,
// release, expire). Every field that is set narrows the choice.
type ParkedFilter struct {
	UIDs []uuid.UUID
	// Entity is the child's entity; Parent the entity it waits for; ParentKey a
	// substring of the parent key it waits for (its JSON text).
	Entity, Parent, ParentKey string
	// Since and Until bound when the child was parked: Since <= created_at < Until.
	Since, Until time.Time
	// OlderThan chooses children parked longer than this.
	OlderThan time.Duration
	// After is a listing's cursor; Limit caps a listing (default 100).
	After uuid.UUID
	Limit int
}

func (f ParkedFilter) where(a *args) string {
	conds := []string{"true"}
	if len(f.UIDs) > 0 {
		conds = append(conds, "uid = ANY ("+a.add(f.UIDs)+"::uuid[])")
	}
	if f.Entity != "" {
		conds = append(conds, "child_entity = "+a.add(f.Entity))
	}
	if f.Parent != "" {
		conds = append(conds, "parent_entity = "+a.add(f.Parent))
	}
	if f.ParentKey != "" {
		conds = append(conds, "strpos(parent_key::text, "+a.add(f.ParentKey)+") > 0")
	}
	if !f.Since.IsZero() {
		conds = append(conds, "created_at >= "+a.add(f.Since))
	}
	if !f.Until.IsZero() {
		conds = append(conds, "created_at < "+a.add(f.Until))
	}
	if f.OlderThan > 0 {
		conds = append(conds, "created_at <= now() - "+a.add(f.OlderThan)+"::interval")
	}
	return strings.Join(conds, " AND ")
}

// ListParked returns the parked children f chooses, oldest first, at most f.Limit
// after the cursor f.After, and how many f chooses in all.
func (s *Store) ListParked(ctx context.Context, f ParkedFilter) ([]ParkedInfo, int64, error) {
	var a args
	where := f.where(&a)
	var total int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM bridge.pending_children WHERE `+where, a...).Scan(&total); err != nil {
		return nil, 0, err
	}
	if f.After != uuid.Nil {
		where += " AND (created_at, uid) > (SELECT created_at, uid FROM bridge.pending_children WHERE uid = " + a.add(f.After) + ")"
	}
	rows, err := s.pool.Query(ctx, `SELECT uid, child_entity, child_bk_hash, parent_entity, parent_key, child_rowversion,
		retry_count, max_retries, next_retry_at, created_at, child_payload
		FROM bridge.pending_children WHERE `+where+` ORDER BY created_at, uid LIMIT `+a.add(limitOr(f.Limit, 100)), a...)
	if err != nil {
		return nil, 0, err
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ParkedInfo, error) {
		var p ParkedInfo
		var key, payload []byte
		err := r.Scan(&p.UID, &p.Child, &p.ChildBKHash, &p.Parent, &key, &p.RowVersion, &p.RetryCount, &p.MaxRetries, &p.NextRetryAt, &p.CreatedAt, &payload)
		p.ParentKey, p.ChildPayload = key, payload
		return p, err
	})
	return list, total, err
}

// ParkedUIDs returns the UIDs of the parked children f chooses, oldest first.
func (s *Store) ParkedUIDs(ctx context.Context, f ParkedFilter) ([]uuid.UUID, error) {
	var a args
	rows, err := s.pool.Query(ctx, `SELECT uid FROM bridge.pending_children WHERE `+f.where(&a)+` ORDER BY created_at, uid`, a...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
}

// ParkedCount is the number of children of one entity waiting for one parent entity.
type ParkedCount struct {
	Entity string `json:"child_entity"`
	Parent string `json:"parent_entity"`
	Count  int64  `json:"count"`
}

// CountParked counts the parked children f chooses by child and parent entity.
func (s *Store) CountParked(ctx context.Context, f ParkedFilter) ([]ParkedCount, error) {
	var a args
	rows, err := s.pool.Query(ctx, `SELECT child_entity, parent_entity, count(*) FROM bridge.pending_children WHERE `+f.where(&a)+`
		GROUP BY 1, 2 ORDER BY 1, 2`, a...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[ParkedCount])
}
