package store

import (
	"context"
	"errors"
	"log/slog"
	"time"

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
	reload := func() {
		rules, err := s.LoadMappings(ctx)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("reloading field mappings failed; keeping the current rules", "err", err)
			}
			return
		}
		onChange(rules)
	}
	for ctx.Err() == nil {
		err := s.listen(ctx, resync, reload)
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("field-mapping listener lost its connection; reconnecting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	return nil
}

func (s *Store) listen(ctx context.Context, resync time.Duration, reload func()) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+MappingsChannel); err != nil {
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
