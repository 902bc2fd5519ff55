package sim

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// ServerConfig configures the HTTP API and its failure injection.
type ServerConfig struct {
	// Token, when set, is the bearer token every request must carry.
	Token string
	// SlowPage delays every page of rows.
	SlowPage time.Duration
	// FailEvery answers every n-th page request with 503 (0: never).
	FailEvery int
	// TruncateEvery cuts the body of every n-th page in half (0: never).
	TruncateEvery int
	// MaxLimit caps a page (default 5000).
	MaxLimit int
}

// Page is a page of rows, as the API sends it.
type Page struct {
	Entity string    `json:"entity"`
	Rows   []PageRow `json:"rows"`
	// NextCursor continues after the last row; null on the last page.
	NextCursor *string `json:"next_cursor"`
}

// PageRow is one row of a page.
type PageRow struct {
	RowVersion string         `json:"rowversion"`
	Data       map[string]any `json:"data"`
}

// Handler serves the APISmith API over the ERP:
//
//	GET /api/v1/entities/{entity}/count                    {"entity": "items", "count": 1000}
//	GET /api/v1/entities/{entity}/rows?after=CURSOR&limit=N  keyset paging, in key order
//	GET /api/v1/entities/{entity}/rows?offset=N&limit=N      offset paging
//
// A page is {"entity", "rows": [{"rowversion", "data"}], "next_cursor"}; the cursor
// is opaque to clients. Errors are {"error": "..."} with 400, 401, 404 or 503.
func (e *ERP) Handler(cfg ServerConfig) http.Handler {
	if cfg.MaxLimit <= 0 {
		cfg.MaxLimit = 5000
	}
	var pages atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/entities/{entity}/count", func(w http.ResponseWriter, r *http.Request) {
		n, ok := e.Count(r.PathValue("entity"))
		if !ok {
			fail(w, http.StatusNotFound, "unknown entity %q", r.PathValue("entity"))
			return
		}
		writeJSON(w, map[string]any{"entity": r.PathValue("entity"), "count": n})
	})
	mux.HandleFunc("GET /api/v1/entities/{entity}/rows", func(w http.ResponseWriter, r *http.Request) {
		entity := r.PathValue("entity")
		total, ok := e.Count(entity)
		if !ok {
			fail(w, http.StatusNotFound, "unknown entity %q", entity)
			return
		}
		q := r.URL.Query()
		limit, err := strconv.Atoi(q.Get("limit"))
		if err != nil || limit <= 0 || limit > cfg.MaxLimit {
			fail(w, http.StatusBadRequest, "limit must be 1..%d", cfg.MaxLimit)
			return
		}
		var from int64
		switch {
		case q.Has("after") && q.Has("offset"):
			fail(w, http.StatusBadRequest, "use after or offset, not both")
			return
		case q.Get("after") != "":
			last, err := strconv.ParseInt(q.Get("after"), 10, 64)
			if err != nil || last < 0 {
				fail(w, http.StatusBadRequest, "bad cursor %q", q.Get("after"))
				return
			}
			from = last + 1
		case q.Has("offset"):
			if from, err = strconv.ParseInt(q.Get("offset"), 10, 64); err != nil || from < 0 {
				fail(w, http.StatusBadRequest, "bad offset %q", q.Get("offset"))
				return
			}
		}
		n := pages.Add(1)
		if cfg.SlowPage > 0 {
			time.Sleep(cfg.SlowPage)
		}
		if cfg.FailEvery > 0 && n%int64(cfg.FailEvery) == 0 {
			fail(w, http.StatusServiceUnavailable, "injected failure")
			return
		}
		page := Page{Entity: entity, Rows: []PageRow{}}
		to := min(from+int64(limit), total)
		for i := from; i < to; i++ {
			row := e.Snapshot(entity, i)
			page.Rows = append(page.Rows, PageRow{RowVersion: row.RowVersion, Data: row.Data})
		}
		if to < total {
			c := strconv.FormatInt(to-1, 10)
			page.NextCursor = &c
		}
		body, _ := json.Marshal(page)
		if cfg.TruncateEvery > 0 && n%int64(cfg.TruncateEvery) == 0 {
			body = body[:len(body)/2]
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	if cfg.Token == "" {
		return mux
	}
	want := []byte("Bearer " + cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			fail(w, http.StatusUnauthorized, "a valid bearer token is required")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
}
