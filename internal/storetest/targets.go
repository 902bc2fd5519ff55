package storetest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
)

// The target tables: rows by their target key, holding every column the mapped
// row carries (the store writes only the columns the table has).

// reject is a fault a test injects: the target of entity refuses every row
// written whose column holds value, as a constraint or a trigger of ScheduleHub
// would.
type reject struct{ entity, column, value string }

// WriteTarget upserts rows of entity's target (merging, or replacing, as the
// catalog says; an upsert clears the soft-delete mark it does not carry) and
// deletes rows (or marks them, for a soft delete, when not marked yet).
func (t *tx) WriteTarget(ctx context.Context, entity string, targetRows []apply.TargetRow, deletes []map[string]any) error {
	upserts := make([]map[string]any, len(targetRows))
	for i, r := range targetRows {
		upserts[i] = r.Row
	}
	e, ok := t.m.cat.Entity(entity)
	if !ok {
		return fmt.Errorf("storetest: target of entity %q was not prepared", entity)
	}
	if len(upserts) == 0 && len(deletes) == 0 {
		return nil // as the store: no statement
	}
	if err := t.stmt(ctx); err != nil {
		return err
	}
	// One statement per set of columns: it fails on a key it has written already,
	// unless it updates nothing (only key columns: ON CONFLICT DO NOTHING).
	soft := e.Delete == catalog.DeleteSoft
	bySig := map[string]map[string]bool{}
	for _, row := range upserts {
		cols := slices.Sorted(maps.Keys(row))
		sig := strings.Join(cols, ",")
		if bySig[sig] == nil {
			bySig[sig] = map[string]bool{}
		}
		k := targetKey(e, row)
		doNothing := !soft && e.Upsert != catalog.UpsertReplace && !slices.ContainsFunc(cols, func(c string) bool { return !slices.Contains(e.Target.Key, c) })
		if bySig[sig][k] && !doNothing {
			return t.fail(secondTime(e.Target.QualifiedName() + " key " + k))
		}
		bySig[sig][k] = true
	}
	for _, row := range upserts {
		for _, r := range t.m.rejects {
			if r.entity == entity && row[r.column] != nil && fmt.Sprint(row[r.column]) == r.value {
				return t.fail(rejected("target %s refused the row with %s = %s", e.Target.QualifiedName(), r.column, r.value))
			}
		}
	}
	table := maps.Clone(t.st.targets[entity])
	if table == nil {
		table = map[string]map[string]any{}
	}
	for _, row := range upserts {
		k := targetKey(e, row)
		next := maps.Clone(row)
		if old, ok := table[k]; ok && e.Upsert != catalog.UpsertReplace {
			next = maps.Clone(old)
			maps.Copy(next, row)
		}
		if _, carried := row[e.SoftDeleteColumn]; soft && !carried {
			next[e.SoftDeleteColumn] = nil
		}
		table[k] = next
	}
	for _, row := range deletes {
		k := targetKey(e, row)
		old, ok := table[k]
		switch {
		case !ok:
		case soft && old[e.SoftDeleteColumn] == nil:
			marked := maps.Clone(old)
			marked[e.SoftDeleteColumn] = t.now
			table[k] = marked
		case !soft:
			delete(table, k)
		}
	}
	t.st.targets[entity] = table
	return nil
}

// TargetRows wraps mapped rows for WriteTarget, without ledger rows to tell.
func TargetRows(rows []map[string]any) []apply.TargetRow {
	out := make([]apply.TargetRow, len(rows))
	for i, r := range rows {
		out[i] = apply.TargetRow{Row: r}
	}
	return out
}

// targetKey identifies a target row by its key columns' values (a number and a
// string of the same text are the same value, as the typed column makes them).
func targetKey(e *catalog.Entity, row map[string]any) string {
	parts := make([]string, len(e.Target.Key))
	for i, col := range e.Target.Key {
		v, ok := event.KeyValue(row[col])
		if !ok {
			v = fmt.Sprint(row[col])
		}
		parts[i] = v
	}
	return strings.Join(parts, "\x00")
}
