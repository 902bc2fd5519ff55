package service_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/syncflow/syncflow/internal/service"
	"github.com/syncflow/syncflow/internal/testenv"
	"github.com/syncflow/syncflow/streams"
)

// A stored catalog that does not fit (one entity's table is missing) puts none
// of its targets in use: an existing entity the new version moves to another
// table goes on being written to the table of the version in force, and writes
// never flip between the two.
func TestRefusedCatalogPutsNoneOfItsTargetsInUse(t *testing.T) {
	e, st, builtIn := catalogEnv(t)
	if _, err := e.conn.Exec(e.ctx, `CREATE TABLE schedulehub.sites_v2 (LIKE schedulehub.sites INCLUDING ALL)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.conn.Exec(e.ctx, `DELETE FROM bridge.catalog_versions WHERE version > 1; DROP TABLE IF EXISTS schedulehub.sites_v2`)
	})
	e.start(func(c *service.Config) {
		c.Catalog, c.Streams, c.StreamsFS = nil, service.Config{}.Streams, streams.FS
		c.MappingResync = time.Hour // only NOTIFYs: deterministic
		c.StrayInterval = time.Hour // no stray-drain refresh either
	})
	// v2: sites moves to sites_v2 (fits), suppliers has no table (does not fit).
	v2 := bytes.Replace(builtIn, []byte("table: schedulehub.sites\n"), []byte("table: schedulehub.sites_v2\n"), 1)
	v2 = append(v2, "\n  suppliers:\n    key: [SUPPLIER_ID]\n    target: {table: schedulehub.suppliers, key: [supplier_id]}\n"...)
	if _, stored, err := st.StoreCatalog(e.ctx, v2, "test", "half fits"); err != nil || !stored {
		t.Fatalf("storing: %v %v", stored, err)
	}
	e.waitForLog("the stored catalog does not fit the target tables; keeping the one in force")

	e.publish("apismith.cdc.sites", site("S1", 1, "first"))
	e.eventually(`SELECT count(*) FROM bridge.synced_records WHERE entity_name = 'sites'`, "1", 10*time.Second)
	t.Logf("after the refused v2: sites=%q sites_v2=%q",
		e.query(`SELECT contract||':'||description FROM schedulehub.sites`),
		e.query(`SELECT contract||':'||description FROM schedulehub.sites_v2`))

	// A mapping reload (any rules change) prepares the targets of the catalog in force again.
	if _, err := e.conn.Exec(e.ctx, `SELECT pg_notify('bridge_field_mappings', '')`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	e.publish("apismith.cdc.sites", site("S2", 2, "second"))
	e.eventually(`SELECT count(*) FROM bridge.synced_records WHERE entity_name = 'sites'`, "2", 10*time.Second)
	// And a catalog refresh (or the periodic look) prepares v2's again.
	if err := st.RefreshCatalog(e.ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	e.publish("apismith.cdc.sites", site("S3", 3, "third"))
	e.eventually(`SELECT count(*) FROM bridge.synced_records WHERE entity_name = 'sites'`, "3", 10*time.Second)

	sites := e.query(`SELECT string_agg(contract, ',' ORDER BY contract) FROM schedulehub.sites`)
	v2rows := e.query(`SELECT string_agg(contract, ',' ORDER BY contract) FROM schedulehub.sites_v2`)
	t.Logf("schedulehub.sites: %q; schedulehub.sites_v2: %q", sites, v2rows)
	if sites != "S1,S2,S3" {
		t.Errorf("catalog v1 is said to be in force, but the sites rows went to: sites=%q sites_v2=%q", sites, v2rows)
	}
}

func testenvNATS(t *testing.T) string { return testenv.NATS(t).ClientURL() }
