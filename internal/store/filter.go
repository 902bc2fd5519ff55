package store

// The pieces the operator filters share: statement parameters, listing limits and
// changes made a thousand rows at a time.

import (
	"context"
	"strconv"
)

// args collects the parameters of a statement built from a filter.
type args []any

func (a *args) add(v any) string {
	*a = append(*a, v)
	return "$" + strconv.Itoa(len(*a))
}

func limitOr(limit, def int) int {
	if limit <= 0 {
		return def
	}
	return limit
}

// chunked runs sql, which changes at most a thousand rows, until it changes fewer.
func (s *Store) chunked(ctx context.Context, sql string, a args) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, sql, a...)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < 1000 {
			return total, nil
		}
	}
}
