package store_test

import (
	"fmt"
	"testing"
)

func opEvent(order string, op int, rv, desc string) string {
	return fmt.Sprintf(`{"entity":"work_order_operations","op":"upsert","rowversion":%q,"data":{"ORDER_NO":%q,"OPERATION_NO":%d,"CONTRACT":"S1","WORK_CENTER_NO":"WC1","DESCRIPTION":%q}}`, rv, order, op, desc)
}

func woEvent(order, rv, status string) string {
	return fmt.Sprintf(`{"entity":"work_orders","op":"upsert","rowversion":%q,"data":{"ORDER_NO":%q,"CONTRACT":"S1","PART_NO":"P1","STATUS":%q}}`, rv, order, status)
}

// Children first, three levels deep: each waits for its first missing parent, is
// re-parked under the next one, and the last parent releases the whole chain.
func TestParkingCascade(t *testing.T) {
	f := newFixture(t)
	res := f.apply("work_order_operations", nil, opEvent("WO1", 10, "2026-01-01T00:00:01Z", "cut"), opEvent("WO1", 20, "2026-01-01T00:00:01Z", "weld"))
	if res.Counts.Parked != 2 {
		t.Fatalf("operations: %+v", res.Counts)
	}
	f.apply("work_orders", nil, woEvent("WO1", "2026-01-01T00:00:01Z", "Released"))
	f.apply("work_centers", nil, `{"entity":"work_centers","op":"upsert","rowversion":"2026-01-01T00:00:01Z","data":{"CONTRACT":"S1","WORK_CENTER_NO":"WC1"}}`)
	parked := `SELECT child_entity, parent_entity, parent_key::text FROM bridge.pending_children ORDER BY 1, 2`
	want := "work_centers|sites|[\"S1\"]\nwork_order_operations|work_orders|[\"WO1\"]\nwork_order_operations|work_orders|[\"WO1\"]\nwork_orders|sites|[\"S1\"]"
	if got := f.rows(parked); got != want {
		t.Fatalf("parked:\n%s\nwant\n%s", got, want)
	}
	// The site releases the work center and the work order; the work order still
	// waits for its item and is re-parked under it.
	res = f.apply("sites", nil, siteEvent("upsert", "S1", "2026-01-01T00:00:01Z", "plant"))
	if res.Counts.Inserted != 1 || res.Counts.Released != 2 {
		t.Fatalf("sites: %+v", res.Counts)
	}
	want = "work_order_operations|work_orders|[\"WO1\"]\nwork_order_operations|work_orders|[\"WO1\"]\nwork_orders|items|[\"P1\"]"
	if got := f.rows(parked); got != want {
		t.Fatalf("parked after the site:\n%s\nwant\n%s", got, want)
	}
	// The item releases the work order, which releases both operations.
	res = f.apply("items", nil, `{"entity":"items","op":"upsert","rowversion":"20260101000001","data":{"PART_NO":"P1"}}`)
	if res.Counts.Released != 3 {
		t.Fatalf("items: %+v", res.Counts)
	}
	if got := f.rows(`SELECT count(*) FROM bridge.pending_children`); got != "0" {
		t.Fatalf("%s children still parked", got)
	}
	for table, want := range map[string]string{
		"SELECT contract FROM schedulehub.sites":                                                       "S1",
		"SELECT contract, work_center_no FROM schedulehub.work_centers":                                "S1|WC1",
		"SELECT order_no, status FROM schedulehub.work_orders":                                         "WO1|Released",
		"SELECT order_no, operation_no, description FROM schedulehub.work_order_operations ORDER BY 2": "WO1|10|cut\nWO1|20|weld",
		"SELECT part_no FROM schedulehub.items":                                                        "P1",
	} {
		if got := f.rows(table); got != want {
			t.Errorf("%s: %s, want %s", table, got, want)
		}
	}
	// Released children advance their own entity's checkpoint.
	if got := f.rows(`SELECT entity_name FROM bridge.erp_sync_state ORDER BY 1`); got != "items\nsites\nwork_centers\nwork_order_operations\nwork_orders" {
		t.Errorf("checkpoints: %s", got)
	}
	if got := f.rows(`SELECT sum(rows_parked)::int, sum(rows_released)::int FROM bridge.sync_batches`); got != "4|5" {
		t.Errorf("parked|released: %s, want 4|5", got)
	}
}

// One parked row per child key: a newer version replaces it, an older one is stale.
func TestParkedVersions(t *testing.T) {
	f := newFixture(t)
	f.apply("work_orders", nil, woEvent("WO1", "2026-01-01T00:00:05Z", "v5"))
	res := f.apply("work_orders", nil, woEvent("WO1", "2026-01-01T00:00:09Z", "v9"), woEvent("WO2", "2026-01-01T00:00:01Z", "v1"))
	if res.Counts.Parked != 2 {
		t.Fatalf("%+v", res.Counts)
	}
	res = f.apply("work_orders", nil, woEvent("WO1", "2026-01-01T00:00:07Z", "v7"))
	if res.Counts.Stale != 1 || res.Counts.Parked != 0 {
		t.Fatalf("an older version than the parked one: %+v", res.Counts)
	}
	if got := f.rows(`SELECT child_rowversion FROM bridge.pending_children ORDER BY 1`); got != "2026-01-01T00:00:01Z\n2026-01-01T00:00:09Z" {
		t.Fatalf("parked versions: %s", got)
	}
	f.applyParents()
	if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders ORDER BY 1`); got != "WO1|v9\nWO2|v1" {
		t.Fatalf("target: %s", got)
	}
	// A deleted parent does not count as applied: the child waits again.
	f.apply("sites", nil, siteEvent("delete", "S1", "2026-01-02T00:00:00Z", ""))
	res = f.apply("work_orders", nil, woEvent("WO3", "2026-01-01T00:00:01Z", "v1"))
	if res.Counts.Parked != 1 {
		t.Fatalf("child of a deleted parent: %+v", res.Counts)
	}
}

// Parked events with escapes or invalid UTF-8 survive the round trip through
// pending_children's JSONB.
func TestParkingOddPayloads(t *testing.T) {
	f := newFixture(t)
	res := f.apply("work_orders", nil,
		`{"entity":"work_orders","op":"upsert","rowversion":"2026-01-01T00:00:01Z","data":{"ORDER_NO":"WO1","CONTRACT":"S1","PART_NO":"P1","STATUS":"caf\u00e9 \ud83d\ude00"}}`,
		"{\"entity\":\"work_orders\",\"op\":\"upsert\",\"rowversion\":\"2026-01-01T00:00:01Z\",\"data\":{\"ORDER_NO\":\"WO2\",\"CONTRACT\":\"S1\",\"PART_NO\":\"P1\",\"STATUS\":\"bad \xff byte\"}}",
	)
	if res.Counts.Parked != 2 {
		t.Fatalf("%+v", res.Counts)
	}
	f.applyParents()
	if got := f.rows(`SELECT order_no, status FROM schedulehub.work_orders ORDER BY 1`); got != "WO1|café 😀\nWO2|bad \uFFFD byte" {
		t.Fatalf("target: %q", got)
	}
}
