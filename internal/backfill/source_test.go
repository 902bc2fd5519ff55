package backfill_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/backfill"
	"github.com/syncflow/syncflow/internal/sim"
)

// counting serves h, answering the first failFirst requests with 503, and counts
// the requests.
func counting(h http.Handler, failFirst int64) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= failFirst {
			http.Error(w, `{"error": "down for a moment"}`, http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	}))
	return srv, &n
}

func TestSourcePageFields(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := httptest.NewServer(sim.New(sim.Config{Items: 5}).Handler(sim.ServerConfig{}))
	defer srv.Close()
	src := &backfill.HTTPSource{BaseURL: srv.URL}
	rows, next, more, err := src.PageFields(ctx, "items", "", 3, []string{"PART_NO", "LEAD_TIME_DAYS"})
	if err != nil || len(rows) != 3 || !more || next != "2" {
		t.Fatalf("first page: %d rows, next %q, more %v, %v", len(rows), next, more, err)
	}
	if len(rows[1].Data) != 2 || rows[1].Data["PART_NO"] != "P00000001" || rows[1].Data["LEAD_TIME_DAYS"] != json.Number("1") || string(rows[1].RowVersion) != `"20260101000001"` {
		t.Errorf("projected row: %s %v", rows[1].RowVersion, rows[1].Data)
	}
	rows, _, more, err = src.PageFields(ctx, "items", next, 3, nil)
	if err != nil || len(rows) != 2 || more || len(rows[0].Data) != 5 {
		t.Errorf("last page, whole rows: %v more %v %v", rows, more, err)
	}
	if _, _, _, err = src.PageFields(ctx, "items", "", 3, []string{"COLOUR"}); !errors.Is(err, backfill.ErrSource) || !strings.Contains(err.Error(), "COLOUR") {
		t.Errorf("an unknown field: %v", err)
	}

	// A source that ignores the projection sends whole rows: fine. One that sends a
	// row without a rowversion is not.
	var page atomic.Value
	odd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("fields") != "PART_NO" {
			t.Errorf("fields %q", r.URL.Query().Get("fields"))
		}
		w.Write([]byte(page.Load().(string)))
	}))
	defer odd.Close()
	src = &backfill.HTTPSource{BaseURL: odd.URL}
	page.Store(`{"rows": [{"rowversion": "1", "data": {"PART_NO": "P1", "DESCRIPTION": "d"}}], "next_cursor": null}`)
	if rows, _, more, err := src.PageFields(ctx, "items", "", 3, []string{"PART_NO"}); err != nil || len(rows) != 1 || len(rows[0].Data) != 2 || more {
		t.Errorf("a source ignoring fields: %v %v", rows, err)
	}
	page.Store(`{"rows": [{"data": {"PART_NO": "P1"}}], "next_cursor": null}`)
	if _, _, _, err := src.PageFields(ctx, "items", "", 3, []string{"PART_NO"}); !errors.Is(err, backfill.ErrSource) || !strings.Contains(err.Error(), "no rowversion") {
		t.Errorf("a row without a rowversion: %v", err)
	}
}

func TestSourceLookup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	erp := sim.New(sim.Config{Sites: 2, CentersPerSite: 2, Items: 20, WorkOrders: 5})
	dr, err := erp.Drift(sim.DriftConfig{Entity: "items", Delete: 1, Change: 1, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv, requests := counting(erp.Handler(sim.ServerConfig{Token: "right"}), 0)
	defer srv.Close()
	src := &backfill.HTTPSource{BaseURL: srv.URL, Token: "right"}

	rows, err := src.Lookup(ctx, "items", []map[string]any{{"PART_NO": "P00000003"}, {"PART_NO": dr.Deleted[0]}, {"PART_NO": "P00009999"}, {"PART_NO": dr.Changed[0]}})
	if err != nil || len(rows) != 2 || rows[0].Data["PART_NO"] != "P00000003" || rows[1].Data["PART_NO"] != dr.Changed[0] {
		t.Fatalf("items (%s deleted): %v %v", dr.Deleted[0], rows, err)
	}
	if !strings.HasSuffix(rows[1].Data["DESCRIPTION"].(string), "rev 2") || len(rows[0].RowVersion) == 0 {
		t.Errorf("the changed item: %s %v", rows[1].RowVersion, rows[1].Data)
	}
	rows, err = src.Lookup(ctx, "work_order_operations", []map[string]any{{"ORDER_NO": "WO00000001", "OPERATION_NO": 20}, {"ORDER_NO": "WO00000002", "OPERATION_NO": "30"}, {"ORDER_NO": "WO00000002", "OPERATION_NO": 40}})
	if err != nil || len(rows) != 2 || rows[0].Data["OPERATION_NO"] != json.Number("20") || rows[1].Data["ORDER_NO"] != "WO00000002" {
		t.Errorf("operations by a composite key with a number: %v %v", rows, err)
	}
	before := requests.Load()
	if rows, err := src.Lookup(ctx, "items", nil); rows != nil || err != nil || requests.Load() != before {
		t.Errorf("no keys: %v %v, %d requests", rows, err, requests.Load()-before)
	}

	// A 4xx answer is not retried.
	retries := 0
	src.OnRetry = func(backfill.Retry) { retries++ }
	before = requests.Load()
	_, err = src.Lookup(ctx, "items", []map[string]any{{"ORDER_NO": "WO00000001"}})
	if !errors.Is(err, backfill.ErrSource) || !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), "PART_NO") || retries != 0 || requests.Load()-before != 1 {
		t.Errorf("a bad key: %v, %d retries, %d requests", err, retries, requests.Load()-before)
	}
	_, err = (&backfill.HTTPSource{BaseURL: srv.URL, Token: "wrong"}).Lookup(ctx, "items", []map[string]any{{"PART_NO": "P00000001"}})
	if !errors.Is(err, backfill.ErrSource) || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("a wrong token: %v", err)
	}
	if _, err = src.Lookup(ctx, "suppliers", []map[string]any{{"NO": "1"}}); !errors.Is(err, backfill.ErrSource) || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("an unknown entity: %v", err)
	}
}

func TestSourceLookupRetries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	erp := sim.New(sim.Config{Items: 10})
	// Two 503s, then the answer.
	srv, requests := counting(erp.Handler(sim.ServerConfig{}), 2)
	defer srv.Close()
	var retries []backfill.Retry
	src := &backfill.HTTPSource{BaseURL: srv.URL, RetryFor: 10 * time.Second, OnRetry: func(r backfill.Retry) { retries = append(retries, r) }}
	rows, err := src.Lookup(ctx, "items", []map[string]any{{"PART_NO": "P00000007"}})
	if err != nil || len(rows) != 1 || rows[0].Data["PART_NO"] != "P00000007" {
		t.Fatalf("after two 503s: %v %v", rows, err)
	}
	if len(retries) != 2 || requests.Load() != 3 || !strings.Contains(retries[0].Err.Error(), "HTTP 503") || !strings.HasSuffix(retries[0].URL, "/api/v1/entities/items/lookup") {
		t.Errorf("%d requests, retries %+v", requests.Load(), retries)
	}

	trunc := httptest.NewServer(erp.Handler(sim.ServerConfig{TruncateEvery: 2}))
	defer trunc.Close()
	retries = nil
	src.BaseURL = trunc.URL
	for range 2 {
		if rows, err := src.Lookup(ctx, "items", []map[string]any{{"PART_NO": "P00000001"}, {"PART_NO": "P00000002"}}); err != nil || len(rows) != 2 {
			t.Fatalf("a truncated answer heals: %v %v", rows, err)
		}
	}
	if len(retries) != 1 || !strings.Contains(retries[0].Err.Error(), "malformed") {
		t.Errorf("retries %+v", retries)
	}

	down := httptest.NewServer(erp.Handler(sim.ServerConfig{FailEvery: 1}))
	defer down.Close()
	_, err = (&backfill.HTTPSource{BaseURL: down.URL, RetryFor: 300 * time.Millisecond}).Lookup(ctx, "items", []map[string]any{{"PART_NO": "P00000001"}})
	if err == nil || !strings.Contains(err.Error(), "giving up after retrying") || errors.Is(err, backfill.ErrSource) {
		t.Errorf("a source that stays down: %v", err)
	}
}
