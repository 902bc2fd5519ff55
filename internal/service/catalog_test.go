package service_test

import (
	"io/fs"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/stream"
	"github.com/syncflow/syncflow/internal/testenv"
	"github.com/syncflow/syncflow/streams"
)

// catalogEnv is a test environment with a store of its own and the built-in
// catalog's text, for tests that store catalog versions.
func catalogEnv(t *testing.T) (*env, *store.Store, []byte) {
	t.Helper()
	e := newEnv(t, testenv.NATS(t).ClientURL())
	st, err := store.Open(e.ctx, store.Config{URL: e.db})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	builtIn, err := fs.ReadFile(streams.FS, streams.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	return e, st, builtIn
}

// A running service follows the stored catalog, but never into a version that
// does not fit the target tables (stored past `catalog apply`'s checks, or a
// table dropped since): that one is reported and the catalog in force kept,
// until the table exists and a refresh (or the next look) puts it in force.
func TestStoredCatalogThatDoesNotFitIsNotPutInForce(t *testing.T) {
	e, st, builtIn := catalogEnv(t)
	e.start(func(c *service.Config) {
		c.Catalog, c.Streams, c.StreamsFS = nil, service.Config{}.Streams, streams.FS
		c.MappingResync = 500 * time.Millisecond
	})
	const suppliers = "\n  suppliers:\n    key: [SUPPLIER_ID]\n    target: {table: schedulehub.suppliers, key: [supplier_id]}\n"
	v, stored, err := st.StoreCatalog(e.ctx, append(builtIn, suppliers...), "test", "no table yet")
	if err != nil || !stored {
		t.Fatalf("storing: %v %v", stored, err)
	}
	e.waitForLog("the stored catalog does not fit the target tables; keeping the one in force")
	if strings.Contains(e.logs.String(), "catalog version in force") {
		t.Fatalf("a catalog whose table is missing was put in force:\n%s", e.logs)
	}
	// The sites consumer goes on as before.
	e.publish("apismith.cdc.sites", site("S1", 1, "still here"))
	e.eventually(`SELECT description FROM schedulehub.sites`, "still here", 10*time.Second)
	if _, err := e.conn.Exec(e.ctx, `CREATE TABLE schedulehub.suppliers (supplier_id text PRIMARY KEY, name text)`); err != nil {
		t.Fatal(err)
	}
	if err := st.RefreshCatalog(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.waitForLog(`msg="catalog version in force" version=` + itoa(v))
}

func (e *env) waitForLog(text string) {
	e.t.Helper()
	// The consumers are looked at every 10 seconds: a loaded machine takes a
	// while longer.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(e.logs.String(), text) {
		if time.Now().After(deadline) {
			e.t.Fatalf("no %q in the logs:\n%s", text, e.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// A mapped column dropped under the running service: the write that finds it
// gone has the rules checked again, and the batch is prepared again with them,
// so the value fails its record at stage mapping, with the reason, at once; a
// record without the field is written. Nothing vanishes in the window before
// the next look at the rules.
func TestDroppedColumnFailsItsValuesAtOnce(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	if _, err := e.conn.Exec(e.ctx, `INSERT INTO bridge.field_mappings (uid, entity_name, source_field, target_field)
		VALUES (gen_random_uuid(), 'sites', 'COMPANY_ID', 'company')`); err != nil {
		t.Fatal(err)
	}
	e.start(nil) // the rules are looked at only every minute
	e.publish("apismith.cdc.sites", `{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S1","COMPANY_ID":"Acme"}}`)
	e.eventually(`SELECT company FROM schedulehub.sites`, "Acme", 10*time.Second)
	if _, err := e.conn.Exec(e.ctx, `ALTER TABLE schedulehub.sites DROP COLUMN company`); err != nil {
		t.Fatal(err)
	}
	e.publish("apismith.cdc.sites", `{"entity":"sites","op":"upsert","rowversion":"2026-01-02T00:00:00Z","data":{"CONTRACT":"S1","DESCRIPTION":"moved","COMPANY_ID":"Acme AB"}}`)
	e.publish("apismith.cdc.sites", `{"entity":"sites","op":"upsert","rowversion":"2026-01-02T00:00:00Z","data":{"CONTRACT":"S2","DESCRIPTION":"second"}}`)
	e.eventually(`SELECT contract, description FROM schedulehub.sites WHERE contract = 'S2'`, "S2|second", 10*time.Second)
	e.eventually(`SELECT stage_failed, error_message FROM bridge.failed_records WHERE resolved_at IS NULL`,
		"mapping|mapping: field COMPANY_ID -> company: schedulehub.sites has no column company: its values would be dropped", 10*time.Second)
	if got := testenv.Rows(t, e.conn, `SELECT description FROM schedulehub.sites WHERE contract = 'S1'`); got != "<nil>" {
		t.Errorf("S1 was written without its COMPANY_ID: description %q", got)
	}
}

// A consumer whose ack wait changes (the catalog's consumer settings, then
// streams apply) is started again, so that it keeps the messages it holds alive
// often enough for the new ack wait.
func TestChangedAckWaitRestartsTheConsumer(t *testing.T) {
	srv := testenv.NATS(t)
	e := newEnv(t, srv.ClientURL())
	e.start(nil)
	// The consumer runs, with the ack wait it started with, before the
	// settings change: under load, one started after the change took the new
	// ack wait at its start and had nothing to notice.
	e.publish("apismith.cdc.sites", site("S0", 1, "before the change"))
	e.eventually(`SELECT description FROM schedulehub.sites WHERE contract = 'S0'`, "before the change", 10*time.Second)
	cat, err := catalog.Parse([]byte("consumers: {realtime: {ack_wait: 7s}}\nentities:\n  sites: {key: [CONTRACT], target: {table: schedulehub.sites, key: [contract]}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	defs, err := stream.LoadDefinitions(streams.FS, cat)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Apply(e.ctx, e.js, defs); err != nil {
		t.Fatal(err)
	}
	e.waitForLog(`msg="the consumer's ack wait changed: starting it again" entity=sites stream=APISMITH_CDC was=1m0s now=7s`)
	e.publish("apismith.cdc.sites", site("S1", 1, "after the restart"))
	e.eventually(`SELECT description FROM schedulehub.sites WHERE contract = 'S1'`, "after the restart", 10*time.Second)
}
