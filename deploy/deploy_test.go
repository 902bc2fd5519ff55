package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.yaml.in/yaml/v3"

	"github.com/syncflow/syncflow/deploy"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/pipeline"
	"github.com/syncflow/syncflow/internal/store"
	"github.com/syncflow/syncflow/internal/telemetry"
	"github.com/syncflow/syncflow/internal/testenv"
	"github.com/syncflow/syncflow/streams"
)

// yamlDocs parses every document of a YAML file.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		docs = append(docs, doc)
	}
}

// commands are syncflow's commands: every manifest must run one of them.
var commands = []string{"run", "migrate", "streams", "mappings", "dlq", "parked", "replay", "backfill", "schedule", "status", "prune"}

func TestKubernetesManifests(t *testing.T) {
	kinds := map[string]bool{}
	var args [][]any
	for _, f := range []string{"k8s/deployment.yaml", "k8s/job-migrate.yaml", "k8s/cronjob-backfill.yaml", "k8s/configmap-catalog.yaml"} {
		for _, doc := range yamlDocs(t, f) {
			if doc["apiVersion"] == nil || doc["kind"] == nil {
				t.Errorf("%s: a document without apiVersion or kind", f)
			}
			kinds[doc["kind"].(string)] = true
			walk(doc, func(k string, v any) {
				if k == "args" {
					args = append(args, v.([]any))
				}
			})
		}
	}
	for _, k := range []string{"Deployment", "Service", "Job", "CronJob", "ConfigMap"} {
		if !kinds[k] {
			t.Errorf("no %s", k)
		}
	}
	for _, a := range args {
		if !slices.Contains(commands, a[0].(string)) {
			t.Errorf("args %v do not start with a syncflow command", a)
		}
	}
	// The probes use the endpoints and port the service serves.
	dep := yamlDocs(t, "k8s/deployment.yaml")[0]
	var probes []string
	walk(dep, func(k string, v any) {
		if k == "httpGet" {
			probes = append(probes, v.(map[string]any)["path"].(string))
		}
	})
	slices.Sort(probes)
	if !slices.Equal(probes, []string{"/healthz", "/readyz"}) {
		t.Errorf("probes %v", probes)
	}
	// The catalog ConfigMap is the shipped catalog.
	cm := yamlDocs(t, "k8s/configmap-catalog.yaml")[0]
	shipped, _ := streams.FS.ReadFile(streams.CatalogFile)
	if got := cm["data"].(map[string]any)["catalog.yaml"].(string); got != string(shipped) {
		t.Errorf("k8s/configmap-catalog.yaml differs from streams/catalog.yaml")
	}
	if _, err := catalog.Parse([]byte(cm["data"].(map[string]any)["catalog.yaml"].(string))); err != nil {
		t.Error(err)
	}
	// No secret is written in the manifests: credentials come by reference.
	for _, f := range []string{"k8s/deployment.yaml", "k8s/job-migrate.yaml", "k8s/cronjob-backfill.yaml", "compose.yaml"} {
		data, _ := os.ReadFile(f)
		if regexp.MustCompile(`(?i)password\s*[:=]\s*["']?[a-z0-9]{6,}`).Match(data) {
			t.Errorf("%s seems to hold a password", f)
		}
	}
}

func TestComposeFile(t *testing.T) {
	doc := yamlDocs(t, "compose.yaml")[0]
	services := doc["services"].(map[string]any)
	for _, s := range []string{"postgres", "nats", "syncflow", "apismith-sim", "migrate", "backfill"} {
		if services[s] == nil {
			t.Errorf("no service %s", s)
		}
	}
	for name, s := range services {
		if cmd, ok := s.(map[string]any)["command"].([]any); ok && s.(map[string]any)["entrypoint"] == nil && name != "nats" {
			if !slices.Contains(commands, cmd[0].(string)) {
				t.Errorf("service %s runs %v", name, cmd)
			}
		}
	}
}

func walk(v any, fn func(string, any)) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			fn(k, val)
			walk(val, fn)
		}
	case []any:
		for _, val := range x {
			walk(val, fn)
		}
	}
}

// metricNames returns the names SyncFlow exposes, histogram series included.
func metricNames(t *testing.T) map[string]bool {
	t.Helper()
	m := telemetry.NewMetrics()
	m.RegisterPool(func() telemetry.Pool { return telemetry.Pool{} })
	// Touch every vector once so that it is gathered.
	m.Events.WithLabelValues("e", "s", "o").Inc()
	m.Released.WithLabelValues("e", "s").Inc()
	m.BatchDuration.WithLabelValues("e", "s").Observe(1)
	m.BatchSize.WithLabelValues("e", "s").Observe(1)
	m.Lag.WithLabelValues("e", "s").Observe(1)
	m.ConsumerPending.WithLabelValues("s", "e").Set(1)
	m.ConsumerAckPending.WithLabelValues("s", "e").Set(1)
	m.DeadLetters.WithLabelValues("e", "s").Set(1)
	m.DeadLetterAge.WithLabelValues("e").Set(1)
	m.Parked.WithLabelValues("e").Set(1)
	m.ParkedAge.WithLabelValues("e").Set(1)
	m.CheckpointAge.WithLabelValues("e", "s").Set(1)
	m.BackfillRows.WithLabelValues("e").Set(1)
	m.BackfillTotal.WithLabelValues("e").Set(1)
	m.BackfillNextRun.WithLabelValues("e").Set(1)
	m.BackfillFailing.WithLabelValues("e").Set(1)
	m.Held.WithLabelValues("e", "s").Set(1)
	m.HeldRetries.WithLabelValues("e", "s", "r").Inc()
	m.Escalations.WithLabelValues("e", "s").Inc()
	m.Inversions.WithLabelValues("e").Inc()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		n := f.GetName()
		names[n] = true
		if f.GetType().String() == "HISTOGRAM" {
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		}
	}
	return names
}

func TestAlertRulesAndDashboardUseMetricsThatExist(t *testing.T) {
	names := metricNames(t)
	ref := regexp.MustCompile(`syncflow_[a-z_]+`)
	doc := yamlDocs(t, "prometheus/alerts.yml")[0]
	var alerts []string
	for _, g := range doc["groups"].([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			rule := r.(map[string]any)
			alerts = append(alerts, rule["alert"].(string))
			for _, m := range ref.FindAllString(rule["expr"].(string), -1) {
				if !names[m] {
					t.Errorf("alert %s uses %s, which SyncFlow does not expose", rule["alert"], m)
				}
			}
		}
	}
	for _, want := range []string{"SyncFlowDeadLettersGrowing", "SyncFlowLagRising", "SyncFlowOrphansAging", "SyncFlowBackfillBehindSchedule",
		"SyncFlowRowversionInversions", "SyncFlowBatchHeld"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
	data, err := os.ReadFile("grafana/syncflow.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil || len(dash.Panels) < 8 {
		t.Fatalf("dashboard: %v, %d panels", err, len(dash.Panels))
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range ref.FindAllString(tg.Expr, -1) {
				if !names[m] {
					t.Errorf("panel %q uses %s, which SyncFlow does not expose", p.Title, m)
				}
			}
		}
	}
}

// The roles SQL works: bridge_owner migrates, bridge_user runs the pipeline, and
// bridge_user can do nothing else.
func TestRoles(t *testing.T) {
	ctx := context.Background()
	db, drop, err := testenv.NewDatabase(ctx, "roles")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.Close(ctx)
		drop()
		if c, err := pgx.Connect(ctx, testenv.AdminURL()); err == nil {
			_, _ = c.Exec(ctx, `DROP ROLE IF EXISTS bridge_user`)
			_, _ = c.Exec(ctx, `DROP ROLE IF EXISTS bridge_owner`)
			c.Close(ctx)
		}
	})
	roles, err := os.ReadFile("roles.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{deploy.ScheduleHubSQL, string(roles), string(roles)} { // twice: idempotent
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Exec(ctx, `CREATE TABLE public.outsider (id int)`); err != nil {
		t.Fatal(err)
	}
	as := func(role string) string {
		u, _ := url.Parse(db.URL)
		u.User = url.User(role)
		return u.String()
	}
	m, err := store.NewMigrator(as("bridge_owner"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Up(); err != nil {
		t.Fatalf("bridge_owner cannot migrate: %v", err)
	}
	m.Close()

	// bridge_user does its job.
	st, err := store.Open(ctx, store.Config{URL: as("bridge_user")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if v, _, err := st.SchemaVersion(ctx); err != nil || v == 0 {
		t.Fatalf("bridge_user cannot read the schema version: %d %v", v, err)
	}
	cat, _ := testenv.Shipped(t)
	if err := st.PrepareTargets(ctx, cat); err != nil {
		t.Fatal(err)
	}
	e, _ := cat.Entity("sites")
	ds := []pipeline.Delivery{{Subject: "apismith.cdc.sites", Source: pipeline.Realtime, Stream: streams.Realtime, StreamSeq: 1,
		Data: []byte(`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S1"}}`)}}
	res, err := st.ApplyBatch(ctx, store.Batch{Entity: e, Catalog: cat, BatchUID: testUID(), NewBatch: true, SyncType: "realtime",
		Replica: "roles", Deliveries: ds, Prepared: pipeline.Preparer{Catalog: cat}.Prepare(ds)})
	if err != nil || res.Counts.Inserted != 1 {
		t.Fatalf("bridge_user cannot apply a batch: %+v %v", res.Counts, err)
	}
	if err := st.FlushCheckpoints(ctx); err != nil {
		t.Fatal(err)
	}

	// And nothing more.
	user, err := pgx.Connect(ctx, as("bridge_user"))
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close(ctx)
	for _, sql := range []string{
		`INSERT INTO public.outsider VALUES (1)`,
		`CREATE TABLE public.mine (id int)`,
		`CREATE TABLE bridge.mine (id int)`,
		`DROP TABLE bridge.sync_batches`,
		`ALTER TABLE schedulehub.sites ADD COLUMN x int`,
		`TRUNCATE bridge.synced_records`,
		`CREATE SCHEMA other`,
	} {
		_, err := user.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("bridge_user: %s: %v, want permission denied (42501)", sql, err)
		}
	}
	if got := testenv.Rows(t, user, `SELECT contract FROM schedulehub.sites`); !strings.Contains(got, "S1") {
		t.Errorf("target: %s", got)
	}
}
