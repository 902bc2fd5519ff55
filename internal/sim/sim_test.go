package sim

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestTrafficIsDeterministicAndExpectFollowsIt(t *testing.T) {
	e := New(Config{Sites: 3, CentersPerSite: 2, Items: 50, WorkOrders: 20})
	cfg := TrafficConfig{Events: 500, Seed: 7, ChildrenFirst: 0.05, Duplicates: 0.1, OutOfOrder: 0.1, Deletes: 0.05, Poison: 0.02}
	a, ca := e.Traffic(cfg)
	b, _ := e.Traffic(cfg)
	if len(a) != len(b) || string(a[100].Body) != string(b[100].Body) {
		t.Fatal("the same config gave different traffic")
	}
	if ca.Poison == 0 || ca.extra["work_orders"] == 0 {
		t.Fatalf("the traffic has no poison or no new chains: %+v", ca.extra)
	}
	snap, after := e.Expect(nil), e.Expect(ca)
	if snap["work_orders"].Rows != 20 || after["work_orders"].Rows != 20+ca.extra["work_orders"] {
		t.Errorf("work orders: snapshot %d, after %d (+%d new)", snap["work_orders"].Rows, after["work_orders"].Rows, ca.extra["work_orders"])
	}
	deleted := 0
	for _, c := range ca.rows["work_order_operations"] {
		if c.deleted {
			deleted++
		}
	}
	if want := 60 + ca.extra["work_order_operations"] - int64(deleted); after["work_order_operations"].Rows != want {
		t.Errorf("operations: %d, want %d", after["work_order_operations"].Rows, want)
	}
	if snap["items"].Digest == after["items"].Digest {
		t.Error("the traffic did not change the items")
	}
}

func TestHandlerPages(t *testing.T) {
	e := New(Config{Items: 25})
	srv := httptest.NewServer(e.Handler(ServerConfig{Token: "s3cret", TruncateEvery: 3, FailEvery: 4}))
	defer srv.Close()
	get := func(path string, token string) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sb strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			sb.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return resp.StatusCode, sb.String()
	}
	if code, _ := get("/api/v1/entities/items/count", ""); code != 401 {
		t.Errorf("no token: %d", code)
	}
	if code, body := get("/api/v1/entities/items/count", "s3cret"); code != 200 || !strings.Contains(body, `"count":25`) {
		t.Errorf("count: %d %s", code, body)
	}
	if code, _ := get("/api/v1/entities/suppliers/count", "s3cret"); code != 404 {
		t.Errorf("unknown entity: %d", code)
	}
	if code, _ := get("/api/v1/entities/items/rows?limit=0", "s3cret"); code != 400 {
		t.Errorf("bad limit: %d", code)
	}
	// Pages 1 and 2 are whole, page 3 is truncated, page 4 fails.
	code, body := get("/api/v1/entities/items/rows?limit=10", "s3cret")
	var p Page
	if code != 200 || json.Unmarshal([]byte(body), &p) != nil || len(p.Rows) != 10 || p.NextCursor == nil || *p.NextCursor != "9" {
		t.Fatalf("first page: %d %s", code, body)
	}
	if p.Rows[0].Data["PART_NO"] != "P00000000" || p.Rows[0].RowVersion != "20260101000000" {
		t.Errorf("first row: %+v", p.Rows[0])
	}
	code, body = get("/api/v1/entities/items/rows?limit=10&after=19", "s3cret")
	if code != 200 || json.Unmarshal([]byte(body), &p) != nil || len(p.Rows) != 5 || p.NextCursor != nil {
		t.Fatalf("last page: %d %s", code, body)
	}
	code, body = get("/api/v1/entities/items/rows?limit=10&offset=10", "s3cret")
	if code != 200 || json.Unmarshal([]byte(body), &p) == nil {
		t.Errorf("the third page should be truncated: %d %s", code, body)
	}
	if code, _ = get("/api/v1/entities/items/rows?limit=10", "s3cret"); code != 503 {
		t.Errorf("the fourth page should fail: %d", code)
	}
}
