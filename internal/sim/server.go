package sim

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// ServerConfig configures the HTTP API and its failure injection.
type ServerConfig struct {
	// Token, when set, is the bearer token every request must carry.
	Token string
	// SlowPage delays every page of rows and every lookup.
	SlowPage time.Duration
	// FailEvery answers every n-th page or lookup request with 503 (0: never).
	FailEvery int
	// TruncateEvery cuts the body of every n-th page or lookup answer in half
	// (0: never).
	TruncateEvery int
	// MaxLimit caps a page, and the keys of a lookup (default 5000).
	MaxLimit int
	// Admin serves the endpoints that change the ERP (/admin/traffic and
	// /admin/drift); without it they answer 404.
	Admin bool
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

// LookupRequest is the body of a lookup: one object per key, holding exactly the
// entity's key fields (values as strings or numbers; they are compared as text).
type LookupRequest struct {
	Keys []map[string]any `json:"keys"`
}

// LookupResult is the answer to a lookup: the live rows found, in the order of the
// keys asked. Keys not found (or deleted) are absent.
type LookupResult struct {
	Entity string    `json:"entity"`
	Rows   []PageRow `json:"rows"`
}

// TrafficResult is the answer of POST /admin/traffic.
type TrafficResult struct {
	Applied bool `json:"applied"`
	// Events is how many events the traffic has; Digest is their EventsDigest, so
	// that whoever published them can check the ERP made the same traffic.
	Events int    `json:"events"`
	Digest string `json:"digest"`
}

// adminOff is the answer to the admin endpoints of a server without Admin.
const adminOff = "the admin endpoints are off: start the simulator with them (apismith-sim serve --admin)"

// Handler serves the APISmith API over the ERP's current state (the snapshot, plus
// the traffic applied and the drift made since):
//
//	GET  /api/v1/entities/{entity}/count                    {"entity": "items", "count": 1000}
//	GET  /api/v1/entities/{entity}/rows?after=CURSOR&limit=N  keyset paging, in key order
//	GET  /api/v1/entities/{entity}/rows?offset=N&limit=N      offset paging
//	POST /api/v1/entities/{entity}/lookup                   rows by business key
//
// The count and both pagings cover the live rows: deleted rows are skipped, rows
// created since the snapshot follow it. A page is {"entity", "rows": [{"rowversion",
// "data"}], "next_cursor"}; next_cursor is null on the last page and is opaque to
// clients. Paging takes fields=F1,F2 (field names as in data, e.g. PART_NO) to send
// only those fields in each row's data; the rowversion is always sent.
//
// A lookup's body is {"keys": [{"PART_NO": "P00000001"}, ...]}: at most MaxLimit
// keys, each with exactly the entity's key fields, values compared as text (10 and
// "10" match). It answers {"entity", "rows": [{"rowversion", "data"}]}: the live
// rows found, in the order asked; a key not found or deleted is absent.
//
// With Admin, two endpoints change the ERP:
//
//	POST /admin/traffic  a TrafficConfig  applies that traffic's changes  {"applied": true, "events": N, "digest": "..."}
//	POST /admin/drift    a DriftConfig    drifts silently                {"created": [keys], "changed": [...], "deleted": [...]}
//
// Errors are {"error": "..."} with 400, 401, 404 or 503.
func (e *ERP) Handler(cfg ServerConfig) http.Handler {
	if cfg.MaxLimit <= 0 {
		cfg.MaxLimit = 5000
	}
	var requests atomic.Int64
	// inject applies the failure injection to a page or lookup request: it
	// returns the request's number, or false when it answered 503.
	inject := func(w http.ResponseWriter) (int64, bool) {
		n := requests.Add(1)
		if cfg.SlowPage > 0 {
			time.Sleep(cfg.SlowPage)
		}
		if cfg.FailEvery > 0 && n%int64(cfg.FailEvery) == 0 {
			fail(w, http.StatusServiceUnavailable, "injected failure")
			return n, false
		}
		return n, true
	}
	send := func(w http.ResponseWriter, n int64, v any) {
		body, _ := json.Marshal(v)
		if cfg.TruncateEvery > 0 && n%int64(cfg.TruncateEvery) == 0 {
			body = body[:len(body)/2]
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}
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
		if !Known(entity) {
			fail(w, http.StatusNotFound, "unknown entity %q", entity)
			return
		}
		q := r.URL.Query()
		limit, err := strconv.Atoi(q.Get("limit"))
		if err != nil || limit <= 0 || limit > cfg.MaxLimit {
			fail(w, http.StatusBadRequest, "limit must be 1..%d", cfg.MaxLimit)
			return
		}
		fields, err := e.projection(entity, q.Get("fields"))
		if err != nil {
			fail(w, http.StatusBadRequest, "%v", err)
			return
		}
		var from int64
		byOffset := false
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
			from = min(last, math.MaxInt64-1) + 1
		case q.Has("offset"):
			if from, err = strconv.ParseInt(q.Get("offset"), 10, 64); err != nil || from < 0 {
				fail(w, http.StatusBadRequest, "bad offset %q", q.Get("offset"))
				return
			}
			byOffset = true
		}
		n, ok := inject(w)
		if !ok {
			return
		}
		send(w, n, e.page(entity, from, byOffset, limit, fields))
	})
	mux.HandleFunc("POST /api/v1/entities/{entity}/lookup", func(w http.ResponseWriter, r *http.Request) {
		entity := r.PathValue("entity")
		if !Known(entity) {
			fail(w, http.StatusNotFound, "unknown entity %q", entity)
			return
		}
		keys, err := lookupKeys(r, entity, cfg.MaxLimit)
		if err != nil {
			fail(w, http.StatusBadRequest, "%v", err)
			return
		}
		n, ok := inject(w)
		if !ok {
			return
		}
		send(w, n, LookupResult{Entity: entity, Rows: e.lookup(entity, keys)})
	})
	if cfg.Admin {
		mux.HandleFunc("POST /admin/traffic", func(w http.ResponseWriter, r *http.Request) {
			var tc TrafficConfig
			if err := decodeStrict(r, &tc); err != nil {
				fail(w, http.StatusBadRequest, `the body must be a traffic config, e.g. {"events": 1000, "seed": 1, "deletes": 0.02}: %v`, err)
				return
			}
			if err := tc.Validate(); err != nil {
				fail(w, http.StatusBadRequest, "%v", err)
				return
			}
			events, ch := e.Traffic(tc)
			e.ApplyTraffic(ch)
			writeJSON(w, TrafficResult{Applied: true, Events: len(events), Digest: EventsDigest(events)})
		})
		mux.HandleFunc("POST /admin/drift", func(w http.ResponseWriter, r *http.Request) {
			var d DriftConfig
			if err := decodeStrict(r, &d); err != nil {
				fail(w, http.StatusBadRequest, `the body must be a drift config, e.g. {"entity": "items", "create": 1, "change": 2, "delete": 1, "seed": 1}: %v`, err)
				return
			}
			res, err := e.Drift(d)
			switch {
			case errors.Is(err, ErrUnknownEntity):
				fail(w, http.StatusNotFound, "%v", err)
			case err != nil:
				fail(w, http.StatusBadRequest, "%v", err)
			default:
				writeJSON(w, res)
			}
		})
	} else {
		mux.HandleFunc("/admin/", func(w http.ResponseWriter, r *http.Request) {
			fail(w, http.StatusNotFound, adminOff)
		})
	}
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

// fieldsOf returns the fields of entity's rows, sorted.
func (e *ERP) fieldsOf(entity string) []string {
	var out []string
	for f := range e.Revision(entity, 0, 1, snapshotBase).Data {
		out = append(out, f)
	}
	slices.Sort(out)
	return out
}

// projection parses the fields parameter: nil for whole rows.
func (e *ERP) projection(entity, param string) ([]string, error) {
	if strings.TrimSpace(param) == "" {
		return nil, nil
	}
	known := e.fieldsOf(entity)
	var fields []string
	for f := range strings.SplitSeq(param, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if !slices.Contains(known, f) {
			return nil, fmt.Errorf("unknown field %q of %s: the fields are %s", f, entity, strings.Join(known, ", "))
		}
		fields = append(fields, f)
	}
	return fields, nil
}

func project(data map[string]any, fields []string) map[string]any {
	if fields == nil {
		return data
	}
	out := make(map[string]any, len(fields))
	for _, f := range fields {
		out[f] = data[f]
	}
	return out
}

// page returns up to limit live rows of entity from index from (or, byOffset,
// from the from-th live row), in index order, which is key order.
func (e *ERP) page(entity string, from int64, byOffset bool, limit int, fields []string) Page {
	n, _ := e.snapshotCount(entity)
	e.mu.RLock()
	defer e.mu.RUnlock()
	st := e.state[entity]
	total := n + st.created
	if byOffset {
		from = nthLive(st, from)
	}
	page := Page{Entity: entity, Rows: []PageRow{}}
	i := from
	for ; i < total && len(page.Rows) < limit; i++ {
		if row, ok := e.current(entity, st, n, i); ok {
			page.Rows = append(page.Rows, PageRow{RowVersion: row.RowVersion, Data: project(row.Data, fields)})
		}
	}
	if len(page.Rows) == limit {
		// i is one past the last row sent: more if a live row follows.
		for j := i; j < total; j++ {
			if live(st, n, j) {
				c := strconv.FormatInt(i-1, 10)
				page.NextCursor = &c
				break
			}
		}
	}
	return page
}

// lookupKeys reads a lookup's body: each key's values as text, in key order.
func lookupKeys(r *http.Request, entity string, maxKeys int) ([][]string, error) {
	var req struct {
		Keys *[]map[string]any `json:"keys"`
	}
	names := Keys(entity)
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%q: VALUE", k)
	}
	example := "{" + strings.Join(parts, ", ") + "}"
	if err := decodeStrict(r, &req); err != nil || req.Keys == nil {
		if err == nil {
			err = errors.New("no keys")
		}
		return nil, fmt.Errorf(`the body must be {"keys": [%s, ...]}: %v`, example, err)
	}
	if len(*req.Keys) > maxKeys {
		return nil, fmt.Errorf("%d keys: look up at most %d keys per request", len(*req.Keys), maxKeys)
	}
	out := make([][]string, 0, len(*req.Keys))
	for i, obj := range *req.Keys {
		if len(obj) != len(names) {
			return nil, fmt.Errorf("key %d must have exactly the fields of the key of %s: %s", i, entity, example)
		}
		vals := make([]string, len(names))
		for j, name := range names {
			v, ok := obj[name]
			if !ok {
				return nil, fmt.Errorf("key %d must have exactly the fields of the key of %s: %s", i, entity, example)
			}
			switch v := v.(type) {
			case string:
				vals[j] = v
			case json.Number:
				vals[j] = v.String()
			default:
				return nil, fmt.Errorf("key %d: %s must be a string or a number", i, name)
			}
		}
		out = append(out, vals)
	}
	return out, nil
}

// lookup returns the live rows with the given keys, in that order.
func (e *ERP) lookup(entity string, keys [][]string) []PageRow {
	n, _ := e.snapshotCount(entity)
	e.mu.RLock()
	defer e.mu.RUnlock()
	st := e.state[entity]
	rows := []PageRow{}
	for _, vals := range keys {
		i, ok := e.indexOf(entity, vals)
		if !ok {
			continue
		}
		if row, ok := e.current(entity, st, n, i); ok && row.Key == strings.Join(vals, "|") {
			rows = append(rows, PageRow{RowVersion: row.RowVersion, Data: row.Data})
		}
	}
	return rows
}

// decodeStrict reads a JSON body into v, refusing unknown fields.
func decodeStrict(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<20))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one JSON value")
	}
	return nil
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
