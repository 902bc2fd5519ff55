package store

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/mapping"
)

const loadMappingsSQL = `
SELECT entity_name, source_field, target_field, transformation, default_value, is_required
FROM bridge.field_mappings
ORDER BY entity_name, source_field, target_field`

// LoadMappings reads every field-mapping rule, in one consistent snapshot.
func (s *Store) LoadMappings(ctx context.Context) ([]mapping.Rule, error) {
	rows, err := s.pool.Query(ctx, loadMappingsSQL)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (mapping.Rule, error) {
		var r mapping.Rule
		err := row.Scan(&r.Entity, &r.SourceField, &r.TargetField, &r.Transformation, &r.DefaultValue, &r.IsRequired)
		return r, err
	})
}

// MappingsChannel is the NOTIFY channel a trigger on bridge.field_mappings signals.
const MappingsChannel = "bridge_field_mappings"

// WatchMappings calls onChange with the full rule set whenever bridge.field_mappings
// changes (LISTEN/NOTIFY), and every resync interval as a safety net for a missed
// notification. It returns when ctx ends; connection losses are retried.
func (s *Store) WatchMappings(ctx context.Context, resync time.Duration, log *slog.Logger, onChange func([]mapping.Rule)) error {
	return s.watch(ctx, MappingsChannel, "field-mapping", resync, log, func() {
		rules, err := s.LoadMappings(ctx)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("reloading field mappings failed; keeping the current rules", "err", err)
			}
			return
		}
		onChange(rules)
	})
}

// watch calls reload when channel is notified, every resync interval, and each
// time its listener (re)connects. It returns when ctx ends; connection losses
// are retried.
func (s *Store) watch(ctx context.Context, channel, what string, resync time.Duration, log *slog.Logger, reload func()) error {
	for ctx.Err() == nil {
		err := s.listen(ctx, channel, resync, reload)
		if ctx.Err() != nil {
			return nil
		}
		log.Warn(what+" listener lost its connection; reconnecting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	return nil
}

func (s *Store) listen(ctx context.Context, channel string, resync time.Duration, reload func()) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	defer func() {
		// The connection goes back to the pool: stop listening on it.
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, _ = conn.Exec(c, "UNLISTEN *")
	}()
	reload() // a change may have happened while the listener was down
	for {
		wctx, cancel := context.WithTimeout(ctx, resync)
		_, err := conn.Conn().WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil, errors.Is(err, context.DeadlineExceeded):
			reload()
		default:
			return err
		}
	}
}

const replaceMappingsSQL = `
INSERT INTO bridge.field_mappings AS m
    (uid, entity_name, source_field, target_field, transformation, default_value, is_required)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bool[])
ON CONFLICT (entity_name, source_field, target_field) DO UPDATE SET
    transformation = excluded.transformation, default_value = excluded.default_value, is_required = excluded.is_required
WHERE (m.transformation, m.default_value, m.is_required) IS DISTINCT FROM
      (excluded.transformation, excluded.default_value, excluded.is_required)`

// WriteMappings upserts rules in one transaction (running services reload once,
// at the commit). With replace, the other rules of the entities named in rules are
// deleted.
func (s *Store) WriteMappings(ctx context.Context, rules []mapping.Rule, replace bool) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		n := len(rules)
		uids := make([]uuid.UUID, n)
		entities, sources, targets, transforms := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		defaults, required := make([]*string, n), make([]bool, n)
		for i, r := range rules {
			uids[i] = s.NewUID()
			entities[i], sources[i], targets[i] = r.Entity, r.SourceField, r.TargetField
			transforms[i] = r.Transformation
			if transforms[i] == "" {
				transforms[i] = "none"
			}
			defaults[i], required[i] = r.DefaultValue, r.IsRequired
		}
		if replace {
			_, err := tx.Exec(ctx, `DELETE FROM bridge.field_mappings f
				WHERE f.entity_name = ANY ($1::text[])
				  AND NOT EXISTS (SELECT 1 FROM unnest($1::text[], $2::text[], $3::text[]) AS r (e, s, t)
				                  WHERE r.e = f.entity_name AND r.s = f.source_field AND r.t = f.target_field)`,
				entities, sources, targets)
			if err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, replaceMappingsSQL, uids, entities, sources, targets, transforms, defaults, required)
		return err
	})
}
