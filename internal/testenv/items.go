package testenv

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// execer is a connection or a pool.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// LoadSyncedItems fills ScheduleHub's items and the ledger, in SQL, as a sync
// of the simulator's snapshot of n items leaves them (sim.ERP.Revision: part
// P%08d, description "items i rev 1", objversion 2026-01-01 plus i seconds),
// with the target hashes and keys the store records (internal/store/targets.go,
// hashExpr and keyExpr): a large synced entity in seconds, for verify.
func LoadSyncedItems(ctx context.Context, db execer, n int64) error {
	for _, q := range []string{
		`INSERT INTO schedulehub.items (part_no, description, unit_meas, part_status, lead_time_days)
		 SELECT 'P' || lpad(i::text, 8, '0'), 'items ' || i || ' rev 1', 'pcs', 'A', i % 30 FROM generate_series(0, $1::bigint - 1) i`,
		`INSERT INTO bridge.synced_records (entity_name, bk_hash, business_key, rowversion, rowversion_ord, source_stream, stream_seq, payload_hash)
		 SELECT 'items', encode(sha256(convert_to('9:' || k, 'UTF8')), 'hex'), jsonb_build_array(k),
		        to_char(v AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS'), (extract(epoch FROM v) * 1000000)::bigint, 'backfill', i + 1, '\x00'
		 FROM generate_series(0, $1::bigint - 1) i,
		      LATERAL (SELECT 'P' || lpad(i::text, 8, '0') AS k, timestamptz '2026-01-01 00:00:00Z' + i * interval '1 second' AS v) x`,
		`UPDATE bridge.synced_records r SET target_key = ROW(t.part_no)::text,
		        target_hash = int8send(hashtextextended(rtrim((t.*)::text, ',)'), 0))
		 FROM schedulehub.items t WHERE r.entity_name = 'items' AND r.business_key = jsonb_build_array(t.part_no) AND $1::bigint > 0`,
		`VACUUM ANALYZE bridge.synced_records`,
		`VACUUM ANALYZE schedulehub.items`,
	} {
		var args []any
		if !strings.HasPrefix(q, "VACUUM") {
			args = []any{n}
		}
		if _, err := db.Exec(ctx, q, args...); err != nil {
			return fmt.Errorf("loading %d synced items: %w", n, err)
		}
	}
	return nil
}
