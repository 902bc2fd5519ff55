package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/sim"
	"github.com/syncflow/syncflow/internal/testenv"
)

// target gives the test a database with ScheduleHub's tables holding the ERP's
// items (one more soft-deleted) and work-order operations.
func target(t *testing.T, erp *sim.ERP) (string, *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, drop, err := testenv.NewTargetDatabase(ctx, "apismith_sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	for i := range int64(10) {
		r := erp.Snapshot("items", i)
		if _, err := conn.Exec(ctx, `INSERT INTO schedulehub.items (part_no, description) VALUES ($1, $2)`, r.Data["PART_NO"], r.Data["DESCRIPTION"]); err != nil {
			t.Fatal(err)
		}
		r = erp.Snapshot("work_order_operations", i)
		if _, err := conn.Exec(ctx, `INSERT INTO schedulehub.work_order_operations (order_no, operation_no, description) VALUES ($1, $2, $3)`, r.Data["ORDER_NO"], r.Data["OPERATION_NO"], r.Data["DESCRIPTION"]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO schedulehub.items (part_no, description, deleted_at) VALUES ('P00000000-gone', 'x', now())`); err != nil {
		t.Fatal(err)
	}
	return db.URL, conn
}

func TestDrift(t *testing.T) {
	ctx := context.Background()
	erp := sim.New(sim.Config{Sites: 2, CentersPerSite: 2, Items: 10, WorkOrders: 4})
	srv := httptest.NewServer(erp.Handler(sim.ServerConfig{Admin: true, Token: "t0k"}))
	defer srv.Close()
	dbURL, conn := target(t, erp)

	var out bytes.Buffer
	err := drift(ctx, []string{"--sim-url", srv.URL, "--sim-token", "t0k", "--entity", "items", "--create", "1", "--change", "2", "--delete", "2", "--seed", "3",
		"--database-url", dbURL, "--edit-target", "2", "--delete-target", "1", "--json"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	var rep driftReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if rep.SourceCreated.Count != 1 || rep.SourceChanged.Count != 2 || rep.SourceDeleted.Count != 2 || rep.TargetEdited.Count != 2 || rep.TargetDeleted.Count != 1 ||
		!slices.Equal(rep.SourceCreated.Keys, []string{"P00000010"}) {
		t.Fatalf("report: %s", out.String())
	}
	touched := slices.Concat(rep.SourceChanged.Keys, rep.SourceDeleted.Keys)
	var want []string // the first untouched live rows in key order
	for i := range int64(10) {
		if k := erp.Snapshot("items", i).Key; !slices.Contains(touched, k) && len(want) < 3 {
			want = append(want, k)
		}
	}
	if got := slices.Concat(rep.TargetEdited.Keys, rep.TargetDeleted.Keys); !slices.Equal(got, want) {
		t.Errorf("target rows %v, want %v (source touched %v)", got, want, touched)
	}
	got := testenv.Rows(t, conn, `SELECT part_no, description FROM schedulehub.items WHERE deleted_at IS NULL AND part_no = ANY($1) ORDER BY part_no`, want)
	if wantRows := want[0] + "|edited by hand\n" + want[1] + "|edited by hand"; got != wantRows {
		t.Errorf("target after the drift:\n%s\nwant\n%s", got, wantRows)
	}
	if n, _ := erp.Count("items"); n != 10+1-2 {
		t.Errorf("the source has %d items", n)
	}

	// Target drift alone, on a composite key with a number; plain output.
	out.Reset()
	if err := drift(ctx, []string{"--entity", "work_order_operations", "--database-url", dbURL, "--edit-target", "1", "--delete-target", "1"}, &out); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "target-edited   1") || !strings.Contains(s, "source-changed  0") {
		t.Errorf("summary:\n%s", s)
	}
	if got := testenv.Rows(t, conn, `SELECT order_no, operation_no, description FROM schedulehub.work_order_operations ORDER BY 1, 2 LIMIT 2`); got != "WO00000000|10|edited by hand\nWO00000000|30|work_order_operations 2 rev 1" {
		t.Errorf("operations:\n%s", got)
	}

	// Too many target rows: nothing changes.
	before := testenv.Rows(t, conn, `SELECT part_no, description FROM schedulehub.items ORDER BY 1`)
	err = drift(ctx, []string{"--entity", "items", "--database-url", dbURL, "--edit-target", "5", "--delete-target", "5"}, &out)
	if err == nil || !strings.Contains(err.Error(), "schedulehub.items has 9 live rows the source drift did not touch: ask for at most 9") {
		t.Errorf("too many rows: %v", err)
	}
	if after := testenv.Rows(t, conn, `SELECT part_no, description FROM schedulehub.items ORDER BY 1`); after != before {
		t.Errorf("a failed drift changed the target:\n%s", after)
	}
}

func TestDriftErrors(t *testing.T) {
	ctx := context.Background()
	erp := sim.New(sim.Config{Items: 10})
	plain := httptest.NewServer(erp.Handler(sim.ServerConfig{}))
	defer plain.Close()
	admin := httptest.NewServer(erp.Handler(sim.ServerConfig{Admin: true, Token: "t0k"}))
	defer admin.Close()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--sim-url", plain.URL, "--entity", "items", "--change", "1"}, "serve --admin"},
		{[]string{"--sim-url", admin.URL, "--entity", "items", "--change", "1"}, "--sim-token"},
		{[]string{"--sim-url", admin.URL, "--sim-token", "t0k", "--entity", "items", "--change", "11"}, "at most 10"},
		{[]string{"--sim-url", admin.URL, "--sim-token", "t0k", "--entity", "work_orders", "--create", "1"}, "sites and items only"},
		{[]string{"--entity", "items", "--change", "1"}, "need --sim-url"},
		{[]string{"--entity", "suppliers", "--change", "1"}, "--entity must be one of"},
		{[]string{"--entity", "items"}, "nothing to do"},
		{[]string{"--sim-url", "http://127.0.0.1:1", "--entity", "items", "--delete", "1"}, "is apismith-sim serve --admin running"},
	} {
		if err := drift(ctx, c.args, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}

	// publish --sim-url: the same traffic, checked by its digest.
	tc := sim.TrafficConfig{Events: 100, Seed: 2, Deletes: 0.05}
	var res sim.TrafficResult
	if err := adminPost(ctx, admin.URL, "t0k", "/admin/traffic", tc, &res); err != nil {
		t.Fatal(err)
	}
	events, _ := sim.New(sim.Config{Items: 10}).Traffic(tc)
	if !res.Applied || res.Digest != sim.EventsDigest(events) {
		t.Errorf("traffic: %+v", res)
	}
}
