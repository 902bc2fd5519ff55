package normalize

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
)

const testCatalog = `
entities:
  work_orders:
    key: [ORDER_NO]
    parents:
      - {entity: sites, fields: [CONTRACT]}
    target: {table: s.work_orders, key: [order_no]}
  sites:
    key: [CONTRACT]
    target: {table: s.sites, key: [contract]}
  ops:
    key: [ORDER_NO, OPERATION_NO]
    rowversion: number
    parents:
      - {entity: pair, fields: [A, B]}
    target: {table: s.ops, key: [order_no, operation_no]}
  pair:
    key: [A, B]
    target: {table: s.pair, key: [a, b]}
`

func TestNormalize(t *testing.T) {
	cat, err := catalog.Parse([]byte(testCatalog))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, entity, body string
		wantErr            string
		check              func(t *testing.T, r Record)
	}{
		{name: "names upper-cased, strings trimmed, empty to NULL", entity: "work_orders",
			body: `{"entity":"work_orders","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"order_no":" WO-1 ","Contract":"S1","Note":"   ","QTY":5}}`,
			check: func(t *testing.T, r Record) {
				if r.Fields["ORDER_NO"] != "WO-1" || r.Fields["CONTRACT"] != "S1" {
					t.Errorf("fields = %v", r.Fields)
				}
				if v, ok := r.Fields["NOTE"]; !ok || v != nil {
					t.Errorf("NOTE = %#v, want present and nil", v)
				}
				if r.Fields["QTY"] != json.Number("5") {
					t.Errorf("QTY = %#v", r.Fields["QTY"])
				}
				if len(r.Key) != 1 || r.Key[0] != "WO-1" || r.BKHash != event.HashKey([]string{"WO-1"}) {
					t.Errorf("key = %v %s", r.Key, r.BKHash)
				}
				if len(r.Parents) != 1 || r.Parents[0].Entity != "sites" || r.Parents[0].BKHash != event.HashKey([]string{"S1"}) {
					t.Errorf("parents = %+v", r.Parents)
				}
				if r.SourceSystem != "oracle_ifs" || r.RowVersion.Text != "2026-11-26T10:15:03Z" {
					t.Errorf("record = %+v", r)
				}
			}},
		{name: "names upper case already (the fields are the event's map): strings trimmed, empty to NULL", entity: "work_orders",
			body: `{"entity":"work_orders","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"ORDER_NO":" WO-1 ","CONTRACT":"S1","NOTE":"   ","QTY":5}}`,
			check: func(t *testing.T, r Record) {
				if len(r.Fields) != 4 || r.Fields["ORDER_NO"] != "WO-1" || r.Fields["CONTRACT"] != "S1" || r.Fields["QTY"] != json.Number("5") {
					t.Errorf("fields = %v", r.Fields)
				}
				if v, ok := r.Fields["NOTE"]; !ok || v != nil {
					t.Errorf("NOTE = %#v, want present and nil", v)
				}
				if len(r.Key) != 1 || r.Key[0] != "WO-1" || len(r.Parents) != 1 {
					t.Errorf("key %v, parents %+v", r.Key, r.Parents)
				}
			}},
		{name: "a name with space around it is not upper case already", entity: "sites",
			body:    `{"entity":"sites","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"CONTRACT":"S1"," CONTRACT":"S2"}}`,
			wantErr: "more than once"},
		{name: "composite key in catalog order, number rowversion", entity: "ops",
			body: `{"entity":"ops","op":"delete","rowversion":7,"source_system":"ifs2","data":{"OPERATION_NO":10,"ORDER_NO":"WO-1"}}`,
			check: func(t *testing.T, r Record) {
				if r.BKHash != event.HashKey([]string{"WO-1", "10"}) || r.RowVersion.Ord != 7 || r.Op != event.OpDelete || r.SourceSystem != "ifs2" {
					t.Errorf("record = %+v", r)
				}
				if len(r.Parents) != 0 {
					t.Errorf("a parent with no fields present is not referenced: %+v", r.Parents)
				}
			}},
		{name: "missing key field", entity: "work_orders",
			body:    `{"entity":"work_orders","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"CONTRACT":"S1"}}`,
			wantErr: "key field ORDER_NO is missing"},
		{name: "empty key field", entity: "work_orders",
			body:    `{"entity":"work_orders","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"ORDER_NO":"  "}}`,
			wantErr: "key field ORDER_NO is missing or empty"},
		{name: "unparsable rowversion", entity: "sites",
			body:    `{"entity":"sites","op":"upsert","rowversion":"last tuesday","data":{"CONTRACT":"S1"}}`,
			wantErr: "rowversion"},
		{name: "rowversion form mixed", entity: "ops",
			body:    `{"entity":"ops","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"ORDER_NO":"W","OPERATION_NO":1}}`,
			wantErr: "integer counter"},
		{name: "duplicate field by case", entity: "sites",
			body:    `{"entity":"sites","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"CONTRACT":"S1","contract":"S2"}}`,
			wantErr: "more than once"},
		{name: "a key number with a huge exponent is refused before anything computes with it", entity: "work_orders",
			body:    `{"entity":"work_orders","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"ORDER_NO":1e999999}}`,
			wantErr: "field ORDER_NO: number 1e999999 has an exponent beyond"},
		{name: "a parent key number too long", entity: "ops",
			body:    `{"entity":"ops","op":"upsert","rowversion":1,"data":{"ORDER_NO":"W","OPERATION_NO":1,"A":"x","B":` + strings.Repeat("9", 101) + `}}`,
			wantErr: "field B: number of 101 characters exceeds the limit"},
		{name: "a number beyond the caps in any field, nested too", entity: "sites",
			body:    `{"entity":"sites","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"CONTRACT":"S1","NOTES":{"a":[1,2e300]}}}`,
			wantErr: "field NOTES: number 2e300 has an exponent beyond"},
		{name: "a long key number within the caps", entity: "work_orders",
			body: `{"entity":"work_orders","op":"upsert","rowversion":"2026-11-26T10:15:03Z","data":{"ORDER_NO":12345678901234567890123.5e-3}}`,
			check: func(t *testing.T, r Record) {
				if r.Key[0] != "12345678901234567890.1235" {
					t.Errorf("key = %v", r.Key)
				}
			}},
		{name: "parent partly present", entity: "ops",
			body:    `{"entity":"ops","op":"upsert","rowversion":1,"data":{"ORDER_NO":"W","OPERATION_NO":1,"A":"x"}}`,
			wantErr: "only partly present"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := event.Decode([]byte(tt.body), tt.entity)
			if err != nil {
				t.Fatal(err)
			}
			e, _ := cat.Entity(tt.entity)
			r, err := Normalize(ev, e, cat.SourceSystem, time.Time{})
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrNormalize) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrNormalize with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, r)
		})
	}
}

func FuzzNormalize(f *testing.F) {
	cat, err := catalog.Parse([]byte(testCatalog))
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"entity":"ops","op":"upsert","rowversion":3,"data":{"ORDER_NO":"W","OPERATION_NO":1,"A":"x","B":2}}`))
	f.Add([]byte(`{"entity":"sites","op":"delete","rowversion":"20261126101503","data":{"CONTRACT":" "}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := event.Decode(body, "")
		if err != nil {
			return
		}
		e, ok := cat.Entity(ev.Entity)
		if !ok {
			return
		}
		r, err := Normalize(ev, e, "x", time.Time{})
		if err == nil && (len(r.BKHash) != 64 || len(r.Key) != len(e.Key)) {
			t.Fatalf("bad record %+v", r)
		}
	})
}
