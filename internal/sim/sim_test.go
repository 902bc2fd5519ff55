package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
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

// call makes one request to srv with token, and returns the status and body.
func call(t *testing.T, srv *httptest.Server, token, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

// served is one row as the API served it.
type served struct{ key, check, rowversion string }

func decode(t *testing.T, body []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
}

func keyOf(entity string, data map[string]any) string {
	var parts []string
	for _, k := range Keys(entity) {
		parts = append(parts, fmt.Sprint(data[k]))
	}
	return strings.Join(parts, "|")
}

// pageAll reads every row of entity through the API, limit rows a page, by keyset
// or by offset.
func pageAll(t *testing.T, srv *httptest.Server, entity string, limit int, byOffset bool) []served {
	t.Helper()
	var out []served
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 10000 {
			t.Fatal("paging does not end")
		}
		path := fmt.Sprintf("/api/v1/entities/%s/rows?limit=%d", entity, limit)
		switch {
		case byOffset:
			path += fmt.Sprintf("&offset=%d", len(out))
		case cursor != "":
			path += "&after=" + cursor
		}
		code, body := call(t, srv, "", "GET", path, "")
		if code != 200 {
			t.Fatalf("%s: %d %s", path, code, body)
		}
		var p Page
		decode(t, body, &p)
		for _, r := range p.Rows {
			out = append(out, served{keyOf(entity, r.Data), fmt.Sprint(r.Data[CheckField[entity]]), r.RowVersion})
		}
		if p.NextCursor == nil {
			if byOffset && len(p.Rows) == limit {
				continue // offset paging: read until a short page
			}
			return out
		}
		if len(p.Rows) == 0 {
			t.Fatalf("%s: an empty page with a next cursor", path)
		}
		cursor = *p.NextCursor
	}
}

func TestApplyTrafficAgreesWithWalk(t *testing.T) {
	e := New(Config{Sites: 3, CentersPerSite: 2, Items: 60, WorkOrders: 20})
	_, ch := e.Traffic(TrafficConfig{Events: 400, Seed: 3, ChildrenFirst: 0.05, Duplicates: 0.1, OutOfOrder: 0.2, Deletes: 0.1, Poison: 0.02})
	e.ApplyTraffic(ch)
	e.ApplyTraffic(ch) // applying again changes nothing
	srv := httptest.NewServer(e.Handler(ServerConfig{}))
	defer srv.Close()
	want := map[string][]served{}
	e.Walk(ch, func(entity, key, check string) { want[entity] = append(want[entity], served{key: key, check: check}) })
	for _, entity := range Entities {
		for _, byOffset := range []bool{false, true} {
			got := pageAll(t, srv, entity, 7, byOffset)
			if len(got) != len(want[entity]) {
				t.Fatalf("%s (offset %v): %d rows served, Walk has %d", entity, byOffset, len(got), len(want[entity]))
			}
			for i := range got {
				if got[i].key != want[entity][i].key || got[i].check != want[entity][i].check {
					t.Fatalf("%s row %d (offset %v): served %+v, Walk has %+v", entity, i, byOffset, got[i], want[entity][i])
				}
			}
		}
		if n, _ := e.Count(entity); n != int64(len(want[entity])) {
			t.Errorf("%s: Count %d, Walk has %d rows", entity, n, len(want[entity]))
		}
	}
	// A changed row carries the rowversion of its newest version.
	checked := 0
	for entity, rows := range ch.rows {
		for i, c := range rows {
			row, live := e.Current(entity, i)
			if live == c.deleted {
				t.Fatalf("%s %d: live %v, deleted by the traffic %v", entity, i, live, c.deleted)
			}
			if live {
				checked++
				if want := e.Revision(entity, i, c.rev, c.at).RowVersion; row.RowVersion != want || c.at.IsZero() {
					t.Errorf("%s %d: rowversion %s, want %s", entity, i, row.RowVersion, want)
				}
			}
		}
	}
	if checked == 0 || ch.extra["items"] == 0 {
		t.Fatal("the traffic changed nothing or created no chain")
	}
	// Items keep the 14-digit objversion, the others RFC 3339.
	if r, _ := e.Current("items", 0); len(r.RowVersion) != 14 {
		t.Errorf("item rowversion %q", r.RowVersion)
	}
	if r, _ := New(Config{}).Current("sites", 1); r.RowVersion != "2026-01-01T00:00:01Z" {
		t.Errorf("site rowversion %q", r.RowVersion)
	}
}

func TestDrift(t *testing.T) {
	cfg := Config{Sites: 3, CentersPerSite: 2, Items: 40, WorkOrders: 10}
	d := DriftConfig{Entity: "items", Create: 2, Change: 3, Delete: 4, Seed: 9}
	a, b := New(cfg), New(cfg)
	_, ch := a.Traffic(TrafficConfig{Events: 50, Seed: 1})
	a.ApplyTraffic(ch)
	b.ApplyTraffic(ch)
	before, _ := a.Count("items")
	prior := ""
	for i := range int64(40) {
		if r, _ := a.Current("items", i); r.RowVersion > prior {
			prior = r.RowVersion
		}
	}
	ra, err := a.Drift(d)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := b.Drift(d)
	if !reflect.DeepEqual(ra, rb) {
		t.Fatalf("the same drift differs: %+v and %+v", ra, rb)
	}
	if len(ra.Created) != 2 || len(ra.Changed) != 3 || len(ra.Deleted) != 4 {
		t.Fatalf("drift: %+v", ra)
	}
	if ra.Created[0] != "P00000040" || ra.Created[1] != "P00000041" {
		t.Errorf("created %v", ra.Created)
	}
	seen := map[string]bool{}
	for _, k := range slices.Concat(ra.Created, ra.Changed, ra.Deleted) {
		if seen[k] {
			t.Errorf("key %s drifted twice", k)
		}
		seen[k] = true
	}
	if n, _ := a.Count("items"); n != before+2-4 {
		t.Errorf("count %d, want %d", n, before+2-4)
	}
	if r, err := a.Drift(DriftConfig{Entity: "items", Change: 1, Seed: 10}); err != nil || len(r.Changed) != 1 {
		t.Fatalf("a second drift: %+v %v", r, err)
	}

	srv := httptest.NewServer(a.Handler(ServerConfig{}))
	defer srv.Close()
	byKey := map[string]served{}
	for _, r := range pageAll(t, srv, "items", 6, false) {
		byKey[r.key] = r
	}
	for _, k := range ra.Created {
		if r, ok := byKey[k]; !ok || !strings.HasSuffix(r.check, "rev 1") || r.rowversion < "20260901000000" {
			t.Errorf("created %s: %+v %v", k, r, ok)
		}
	}
	for _, k := range ra.Deleted {
		if _, ok := byKey[k]; ok {
			t.Errorf("deleted %s is still served", k)
		}
	}
	for _, k := range ra.Changed {
		r := byKey[k]
		i, _ := strconv.ParseInt(strings.TrimPrefix(k, "P"), 10, 64)
		rev := 2
		if c, ok := ch.rows["items"][i]; ok {
			rev = c.rev + 1
		}
		if r.check != fmt.Sprintf("items %d rev %d", i, rev) || r.rowversion <= prior || r.rowversion < "20260901000000" {
			t.Errorf("changed %s: %+v (newest rowversion before %s)", k, r, prior)
		}
	}
	// Lookup finds the created and changed rows, not the deleted ones.
	var keys []string
	for _, k := range slices.Concat(ra.Created, ra.Deleted, ra.Changed) {
		keys = append(keys, fmt.Sprintf(`{"PART_NO": %q}`, k))
	}
	code, body := call(t, srv, "", "POST", "/api/v1/entities/items/lookup", `{"keys": [`+strings.Join(keys, ",")+`]}`)
	var found LookupResult
	decode(t, body, &found)
	var got []string
	for _, r := range found.Rows {
		got = append(got, keyOf("items", r.Data))
	}
	if code != 200 || !slices.Equal(got, slices.Concat(ra.Created, ra.Changed)) {
		t.Errorf("lookup: %d %v", code, got)
	}

	// Operations have no creation; asking more rows than live fails; the
	// enumerating pick takes nearly every row.
	small := New(Config{Sites: 1, CentersPerSite: 1, Items: 10, WorkOrders: 2})
	for _, bad := range []DriftConfig{{Entity: "suppliers"}, {Entity: "work_order_operations", Create: 1}, {Entity: "items", Change: 6, Delete: 5}, {Entity: "items", Delete: -1}} {
		if _, err := small.Drift(bad); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	if _, err := small.Drift(DriftConfig{Entity: "suppliers"}); !errors.Is(err, ErrUnknownEntity) {
		t.Errorf("unknown entity: %v", err)
	}
	r, err := small.Drift(DriftConfig{Entity: "items", Change: 4, Delete: 5, Seed: 1})
	if err != nil || len(r.Changed)+len(r.Deleted) != 9 {
		t.Fatalf("%+v %v", r, err)
	}
	if n, _ := small.Count("items"); n != 5 {
		t.Errorf("count %d", n)
	}
	ssrv := httptest.NewServer(small.Handler(ServerConfig{}))
	defer ssrv.Close()
	code, body = call(t, ssrv, "", "GET", "/api/v1/entities/items/rows?limit=5", "")
	var p Page
	decode(t, body, &p)
	if code != 200 || len(p.Rows) != 5 || p.NextCursor != nil {
		t.Errorf("the five live items in one page, the last: %d %s", code, body)
	}
	if _, err := small.Drift(DriftConfig{Entity: "items", Delete: 6}); err == nil || !strings.Contains(err.Error(), "5 live rows") {
		t.Errorf("too many: %v", err)
	}
	if r, err := small.Drift(DriftConfig{Entity: "work_order_operations", Change: 1, Delete: 1, Seed: 2}); err != nil || len(r.Changed) != 1 || !strings.Contains(r.Changed[0], "|") {
		t.Errorf("operations: %+v %v", r, err)
	}
}

func TestProjectionAndLookup(t *testing.T) {
	e := New(Config{Sites: 2, CentersPerSite: 2, Items: 20, WorkOrders: 5})
	if _, err := e.Drift(DriftConfig{Entity: "work_order_operations", Delete: 1, Seed: 4}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e.Handler(ServerConfig{MaxLimit: 5}))
	defer srv.Close()
	code, body := call(t, srv, "", "GET", "/api/v1/entities/items/rows?limit=2&fields=PART_NO,%20DESCRIPTION", "")
	var p Page
	decode(t, body, &p)
	if code != 200 || len(p.Rows) != 2 || len(p.Rows[0].Data) != 2 || p.Rows[0].Data["PART_NO"] != "P00000000" || p.Rows[0].RowVersion == "" || p.NextCursor == nil {
		t.Errorf("projection: %d %s", code, body)
	}
	code, body = call(t, srv, "", "GET", "/api/v1/entities/items/rows?limit=2&fields=PART_NO,COLOUR", "")
	if code != 400 || !strings.Contains(string(body), `COLOUR`) {
		t.Errorf("unknown field: %d %s", code, body)
	}

	// The deleted operation, and the one past it.
	var gone Row
	for i := range int64(15) {
		if r, live := e.Current("work_order_operations", i); !live {
			gone = r
		}
	}
	order, no, _ := strings.Cut(gone.Key, "|")
	lookup := func(entity, keys string) (int, []string) {
		code, body := call(t, srv, "", "POST", "/api/v1/entities/"+entity+"/lookup", `{"keys": [`+keys+`]}`)
		if code != 200 {
			return code, []string{string(body)}
		}
		var res LookupResult
		decode(t, body, &res)
		var got []string
		for _, r := range res.Rows {
			if r.RowVersion == "" {
				t.Errorf("no rowversion: %+v", r)
			}
			got = append(got, keyOf(entity, r.Data))
		}
		return code, got
	}
	code, got := lookup("work_order_operations", `{"ORDER_NO": "WO00000004", "OPERATION_NO": 30}, {"ORDER_NO": "`+order+`", "OPERATION_NO": `+no+`}, {"OPERATION_NO": "10", "ORDER_NO": "WO00000001"}`)
	if code != 200 || !slices.Equal(got, []string{"WO00000004|30", "WO00000001|10"}) {
		t.Errorf("operations (%s deleted): %d %v", gone.Key, code, got)
	}
	code, got = lookup("work_centers", `{"CONTRACT": "S0001", "WORK_CENTER_NO": "WC0001"}, {"CONTRACT": "S0001", "WORK_CENTER_NO": "WC0002"}, {"CONTRACT": "S1", "WORK_CENTER_NO": "WC0000"}`)
	if code != 200 || !slices.Equal(got, []string{"S0001|WC0001"}) {
		t.Errorf("work centers: %d %v", code, got)
	}
	code, got = lookup("items", `{"PART_NO": "P00000019"}, {"PART_NO": "P00000020"}, {"PART_NO": "P19"}, {"PART_NO": 19}, {"PART_NO": "P00000003"}`)
	if code != 200 || !slices.Equal(got, []string{"P00000019", "P00000003"}) {
		t.Errorf("items: %d %v", code, got)
	}
	if code, got = lookup("items", ""); code != 200 || len(got) != 0 {
		t.Errorf("no keys: %d %v", code, got)
	}
	for _, bad := range []string{
		strings.Repeat(`{"PART_NO": "P1"}, `, 5) + `{"PART_NO": "P2"}`, // more than MaxLimit
		`{"PART_NO": "P1", "DESCRIPTION": "x"}`,
		`{"DESCRIPTION": "x"}`,
		`{"PART_NO": null}`,
		`{"PART_NO": ["P1"]}`,
	} {
		if code, got := lookup("items", bad); code != 400 {
			t.Errorf("%s: %d %v", bad, code, got)
		}
	}
	for _, bad := range []string{``, `{`, `{"key": []}`, `[]`, `{}`} {
		if code, body := call(t, srv, "", "POST", "/api/v1/entities/items/lookup", bad); code != 400 || !strings.Contains(string(body), `PART_NO`) {
			t.Errorf("body %q: %d %s", bad, code, body)
		}
	}
	if code, _ := call(t, srv, "", "POST", "/api/v1/entities/suppliers/lookup", `{"keys": []}`); code != 404 {
		t.Errorf("unknown entity: %d", code)
	}
}

func TestAdminEndpoints(t *testing.T) {
	cfg := Config{Sites: 2, CentersPerSite: 2, Items: 30, WorkOrders: 10}
	off := httptest.NewServer(New(cfg).Handler(ServerConfig{}))
	defer off.Close()
	for _, path := range []string{"/admin/traffic", "/admin/drift"} {
		if code, body := call(t, off, "", "POST", path, `{}`); code != 404 || !strings.Contains(string(body), "--admin") {
			t.Errorf("%s without Admin: %d %s", path, code, body)
		}
	}

	e := New(cfg)
	on := httptest.NewServer(e.Handler(ServerConfig{Admin: true, Token: "t0k"}))
	defer on.Close()
	tc := TrafficConfig{Events: 200, Seed: 5, ChildrenFirst: 0.05, Deletes: 0.05, OutOfOrder: 0.1}
	body, _ := json.Marshal(tc)
	if code, _ := call(t, on, "", "POST", "/admin/traffic", string(body)); code != 401 {
		t.Errorf("traffic without the token: %d", code)
	}
	code, out := call(t, on, "t0k", "POST", "/admin/traffic", string(body))
	var res TrafficResult
	decode(t, out, &res)
	events, ch := New(cfg).Traffic(tc)
	if code != 200 || !res.Applied || res.Events != len(events) || res.Digest != EventsDigest(events) {
		t.Fatalf("traffic: %d %s", code, out)
	}
	for entity, st := range New(cfg).Expect(ch) {
		if n, _ := e.Count(entity); n != st.Rows {
			t.Errorf("%s: %d rows after the traffic, want %d", entity, n, st.Rows)
		}
	}
	for _, bad := range []string{`{"events": -1}`, `{"events": 10, "dup": 0.1}`, `{"events": 10, "deletes": 1}`, `{"events": 10, "poison": 2}`} {
		if code, out := call(t, on, "t0k", "POST", "/admin/traffic", bad); code != 400 {
			t.Errorf("%s: %d %s", bad, code, out)
		}
	}

	code, out = call(t, on, "t0k", "POST", "/admin/drift", `{"entity": "sites", "create": 1, "change": 1, "delete": 1, "seed": 3}`)
	var dr DriftResult
	decode(t, out, &dr)
	if code != 200 || !slices.Equal(dr.Created, []string{"S0002"}) || len(dr.Changed) != 1 || len(dr.Deleted) != 1 {
		t.Errorf("drift: %d %s", code, out)
	}
	if code, out := call(t, on, "t0k", "POST", "/admin/drift", `{"entity": "sites", "change": 0}`); code != 200 || !strings.Contains(string(out), `"created":[]`) {
		t.Errorf("an empty drift: %d %s", code, out)
	}
	for bad, want := range map[string]int{`{"entity": "suppliers"}`: 404, `{"entity": "work_orders", "create": 1}`: 400, `{"entity": "sites", "change": 5}`: 400, `{"entity": "sites", "craete": 1}`: 400} {
		if code, out := call(t, on, "t0k", "POST", "/admin/drift", bad); code != want {
			t.Errorf("%s: %d %s", bad, code, out)
		}
	}
}

func TestServesWhileChanging(t *testing.T) {
	cfg := Config{Sites: 2, CentersPerSite: 2, Items: 200, WorkOrders: 20}
	e := New(cfg)
	srv := httptest.NewServer(e.Handler(ServerConfig{}))
	defer srv.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for s := range uint64(20) {
			if _, err := e.Drift(DriftConfig{Entity: "items", Create: 1, Change: 2, Delete: 1, Seed: s}); err != nil {
				t.Error(err)
			}
		}
		_, ch := e.Traffic(TrafficConfig{Events: 100, Seed: 1, Deletes: 0.1})
		e.ApplyTraffic(ch)
	}()
	for range 3 {
		pageAll(t, srv, "items", 50, false)
		call(t, srv, "", "POST", "/api/v1/entities/items/lookup", `{"keys": [{"PART_NO": "P00000001"}]}`)
	}
	<-done
	if n, _ := e.Count("items"); n != int64(len(pageAll(t, srv, "items", 50, false))) {
		t.Errorf("count %d, but paging gives another number of rows", n)
	}
}
