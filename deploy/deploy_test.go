package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.yaml.in/yaml/v3"

	"github.com/syncflow/syncflow/deploy"
	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/backfill"
	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/deadletter"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/mapping"
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
var commands = []string{"run", "migrate", "catalog", "streams", "mappings", "dlq", "parked", "replay", "backfill", "schedule", "status", "prune"}

func TestKubernetesManifests(t *testing.T) {
	kinds := map[string]bool{}
	var args [][]any
	if v := yamlDocs(t, "nats/cluster-values.yaml")[0]; fmt.Sprint(v["config"].(map[string]any)["cluster"]) != "map[enabled:true replicas:3]" {
		t.Errorf("nats/cluster-values.yaml is not a three-node cluster: %v", v["config"])
	}
	for _, f := range []string{"k8s/deployment.yaml", "k8s/job-migrate.yaml", "k8s/cronjob-backfill.yaml", "k8s/cronjob-prune.yaml", "k8s/configmap-catalog.yaml", "k8s/configmap-sql.yaml"} {
		for _, doc := range yamlDocs(t, f) {
			if doc["apiVersion"] == nil || doc["kind"] == nil {
				t.Errorf("%s: a document without apiVersion or kind", f)
			}
			kinds[doc["kind"].(string)] = true
			walk(doc, func(k string, v any) {
				// The containers of SyncFlow's image run one of its commands.
				if c, ok := v.(map[string]any); ok && k == "" && strings.Contains(fmt.Sprint(c["image"]), "syncflow") {
					args = append(args, c["args"].([]any))
				}
			})
		}
	}
	if len(args) < 4 {
		t.Fatalf("only %d syncflow containers found", len(args))
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
	for _, f := range []string{"k8s/deployment.yaml", "k8s/job-migrate.yaml", "k8s/cronjob-backfill.yaml", "k8s/cronjob-prune.yaml", "compose.yaml"} {
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

// walk calls fn for every key and value, and with an empty key for every element
// of a list.
func walk(v any, fn func(string, any)) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			fn(k, val)
			walk(val, fn)
		}
	case []any:
		for _, val := range x {
			fn("", val)
			walk(val, fn)
		}
	}
}

// streams apply runs with the admin NATS credential, in the Job and in systemd,
// and the migrate Job runs grants.sql after the migrations and stores the
// catalog before the streams are applied.
func TestStreamsApplyUsesTheAdminCredential(t *testing.T) {
	job := yamlDocs(t, "k8s/job-migrate.yaml")[0]
	spec := job["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	var order []string
	for _, list := range []string{"initContainers", "containers"} {
		for _, c := range spec[list].([]any) {
			c := c.(map[string]any)
			order = append(order, c["name"].(string))
			if c["name"] == "streams" {
				env := fmt.Sprint(c["env"])
				if !strings.Contains(env, "syncflow-admin.creds") || strings.Contains(env, "/syncflow.creds") {
					t.Errorf("the Job's streams apply does not use the admin credential: %s", env)
				}
			}
		}
	}
	if !slices.Equal(order, []string{"migrate", "grants", "catalog", "streams"}) {
		t.Errorf("the Job runs %v, want migrate, grants, catalog, then streams", order)
	}
	cm := yamlDocs(t, "k8s/configmap-sql.yaml")[0]
	grants, _ := os.ReadFile("grants.sql")
	if got := cm["data"].(map[string]any)["grants.sql"].(string); got != string(grants) {
		t.Errorf("k8s/configmap-sql.yaml differs from grants.sql")
	}
	unit, _ := os.ReadFile("systemd/syncflow.service")
	if strings.Contains(string(unit), "streams apply") || !strings.Contains(string(unit), "Requires=syncflow-streams.service") {
		t.Errorf("syncflow.service applies the streams itself, or does not require the unit that does:\n%s", unit)
	}
	streamsUnit, _ := os.ReadFile("systemd/syncflow-streams.service")
	for _, want := range []string{"ExecStart=/usr/local/bin/syncflow streams apply", "User=syncflow-admin", "EnvironmentFile=/etc/syncflow/syncflow-admin.env"} {
		if !strings.Contains(string(streamsUnit), want) {
			t.Errorf("syncflow-streams.service lacks %q", want)
		}
	}
	adminEnv, _ := os.ReadFile("systemd/syncflow-admin.env.example")
	if !strings.Contains(string(adminEnv), "SYNCFLOW_NATS_CREDS=/etc/syncflow/syncflow-admin.creds") {
		t.Errorf("syncflow-admin.env.example: %s", adminEnv)
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
	m.Unmapped.WithLabelValues("e", "F").Inc()
	m.ConsumerMissing.WithLabelValues("s", "e").Set(1)
	m.DriftRows.WithLabelValues("e", "k").Set(1)
	m.LastVerify.WithLabelValues("e").Set(1)
	m.VerifyFailing.WithLabelValues("e").Set(1)
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
	for _, want := range []string{"SyncFlowDeadLettersGrowing", "SyncFlowDeadLettersOutsideCatalog", "SyncFlowLagRising", "SyncFlowOrphansAging",
		"SyncFlowBackfillBehindSchedule", "SyncFlowRowversionInversions", "SyncFlowBatchHeld", "SyncFlowDriftFound", "SyncFlowVerifyFailing"} {
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

// The roles SQL works: bridge_owner migrates and grants, bridge_user applies
// batches and can do nothing else, bridge_operator also runs the operators'
// commands; of ScheduleHub's tables only the catalog's are reachable.
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
			for _, r := range []string{"bridge_operator", "bridge_user", "bridge_owner"} {
				_, _ = c.Exec(ctx, `DROP ROLE IF EXISTS `+r)
			}
			c.Close(ctx)
		}
	})
	roles, err := os.ReadFile("roles.sql")
	if err != nil {
		t.Fatal(err)
	}
	grants, err := os.ReadFile("grants.sql")
	if err != nil {
		t.Fatal(err)
	}
	// A ScheduleHub table that is not the catalog's: SyncFlow must not reach it.
	for _, sql := range []string{deploy.ScheduleHubSQL, `CREATE TABLE schedulehub.planner_notes (id int, note text)`, string(roles), string(roles)} { // twice: idempotent
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
	owner, err := pgx.Connect(ctx, as("bridge_owner"))
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(ctx)
	for range 2 { // idempotent
		if _, err := owner.Exec(ctx, string(grants)); err != nil {
			t.Fatalf("bridge_owner cannot run grants.sql: %v", err)
		}
	}

	// bridge_user does its job.
	cat, _ := testenv.Shipped(t)
	open := func(role string) *store.Store {
		st, err := store.Open(ctx, store.Config{URL: as(role)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		if v, _, err := st.SchemaVersion(ctx); err != nil || v == 0 {
			t.Fatalf("%s cannot read the schema version: %d %v", role, v, err)
		}
		if err := st.PrepareTargets(ctx, cat); err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := open("bridge_user")
	applier, err := apply.NewApplier(st, deadletter.Config{}.Stamp(apply.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	dls, err := deadletter.New(store.DeadLetters{Store: st}, applier, deadletter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	applyAs := func(st *store.Store, entity, body string) apply.Result {
		t.Helper()
		e, _ := cat.Entity(entity)
		ds := []pipeline.Delivery{{Subject: "apismith.cdc." + entity, Source: event.Realtime, StreamSeq: 1, Data: []byte(body)}}
		res, err := applier.ApplyBatch(ctx, apply.Batch{Entity: e, Catalog: cat, BatchUID: testUID(), NewBatch: true, Source: event.Realtime,
			Replica: "roles", Deliveries: ds, Prepared: pipeline.Preparer{Catalog: cat}.Prepare(ds)})
		if err != nil {
			t.Fatalf("cannot apply a batch: %+v %v", res.Counts, err)
		}
		return res
	}
	if res := applyAs(st, "sites", `{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S1"}}`); res.Counts.Inserted != 1 {
		t.Fatalf("bridge_user: %+v", res.Counts)
	}
	// A child parks, a broken event is dead-lettered, a sweep re-checks.
	applyAs(st, "work_centers", `{"entity":"work_centers","op":"upsert","rowversion":"2026-01-01T00:00:00Z","data":{"CONTRACT":"S9","WORK_CENTER_NO":"W"}}`)
	applyAs(st, "sites", `not json`)
	if _, err := dls.Sweep(ctx, cat, nil, "roles", deadletter.ParkedSelection{All: true}); err != nil {
		t.Fatalf("bridge_user cannot sweep: %v", err)
	}
	if err := st.FlushCheckpoints(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.LoadMappings(ctx); err != nil {
		t.Fatalf("bridge_user cannot read the mapping rules: %v", err)
	}
	if err := st.CheckRules(ctx, cat, nil); err != nil {
		t.Fatal(err)
	}
	// Verify compares in temporary tables, also where PUBLIC may not create them.
	if _, err := admin.Exec(ctx, `DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); END $$`); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"bridge_user", "bridge_operator"} {
		vst := open(role)
		s, err := vst.OpenVerify(ctx, "sites")
		if err != nil {
			t.Fatalf("%s cannot verify: %v", role, err)
		}
		if err := s.AddSource(ctx, []backfill.SourceKey{{BKHash: event.HashKey([]string{"S1"}), Key: []string{"S1"}, Ord: 1}}); err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		if err := s.Compare(ctx); err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		c, err := s.Summary(ctx, 5)
		s.Close(ctx)
		if err != nil || c.SourceRows != 1 {
			t.Fatalf("%s: %+v %v", role, c, err)
		}
		now := time.Now()
		if err := vst.RecordVerification(ctx, backfill.Verification{UID: testUID(), Entity: "sites", Trigger: "cli", Started: now, Finished: now, Comparison: c}); err != nil {
			t.Fatalf("%s cannot record a verification: %v", role, err)
		}
	}

	denied := func(who string, err error, what string) {
		t.Helper()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s: %s: %v, want permission denied (42501)", who, what, err)
		}
	}
	// And nothing more: not the operators' work, not DDL, not other tables.
	denied("bridge_user", st.WriteMappings(ctx, []mapping.Rule{{Entity: "sites", SourceField: "X", TargetField: "description"}}, false), "writing a mapping rule")
	_, err = st.PurgeDeadLetters(ctx, store.DeadLetterFilter{})
	denied("bridge_user", err, "purging dead letters")
	_, err = st.Prune(ctx, time.Now().Add(time.Hour), false, nil)
	denied("bridge_user", err, "pruning")
	if _, err := st.EnsurePartitions(ctx, time.Now().AddDate(0, 6, 0)); err != nil {
		t.Errorf("bridge_user cannot make the months ahead: %v", err)
	}
	_, err = st.DropMonths(ctx, time.Now().AddDate(1, 0, 0), false, nil, time.Second)
	denied("bridge_user", err, "dropping a month")
	_, err = st.PruneTombstones(ctx, time.Now(), false, nil)
	denied("bridge_user", err, "pruning tombstones")
	denied("bridge_user", st.SetSchedule(ctx, "items", backfill.Settings{}), "creating a schedule")
	user, err := pgx.Connect(ctx, as("bridge_user"))
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close(ctx)
	forbidden := []string{
		`INSERT INTO public.outsider VALUES (1)`,
		`SELECT * FROM schedulehub.planner_notes`,
		`INSERT INTO schedulehub.planner_notes VALUES (1, 'x')`,
		`CREATE TABLE public.mine (id int)`,
		`CREATE TABLE bridge.mine (id int)`,
		`DROP TABLE bridge.sync_batches`,
		`ALTER TABLE schedulehub.sites ADD COLUMN x int`,
		`TRUNCATE bridge.synced_records`,
		`DELETE FROM bridge.synced_records`,
		`DELETE FROM bridge.failed_records`,
		`DELETE FROM bridge.sync_batches`,
		`UPDATE bridge.field_mappings SET transformation = 'trim'`,
		`CREATE SCHEMA other`,
	}
	for _, sql := range forbidden {
		_, err := user.Exec(ctx, sql)
		denied("bridge_user", err, sql)
	}
	if got := testenv.Rows(t, user, `SELECT contract FROM schedulehub.sites`); !strings.Contains(got, "S1") {
		t.Errorf("target: %s", got)
	}

	// bridge_operator runs the operators' commands.
	op := open("bridge_operator")
	opApplier, err := apply.NewApplier(op, deadletter.Config{}.Stamp(apply.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	opDLs, err := deadletter.New(store.DeadLetters{Store: op}, opApplier, deadletter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := op.WriteMappings(ctx, []mapping.Rule{{Entity: "sites", SourceField: "DESCRIPTION", TargetField: "description", Transformation: "trim"}}, true); err != nil {
		t.Errorf("bridge_operator cannot import mapping rules: %v", err)
	}
	if err := op.SetSchedule(ctx, "items", backfill.Settings{}); err != nil {
		t.Errorf("bridge_operator cannot set a schedule: %v", err)
	}
	if _, err := opDLs.Retry(ctx, cat, nil, "cli", deadletter.Selection{Stage: "decode"}); err != nil {
		t.Errorf("bridge_operator cannot retry dead letters: %v", err)
	}
	if _, err := op.ResolveDeadLetters(ctx, store.DeadLetterFilter{}, "roles test"); err != nil {
		t.Errorf("bridge_operator cannot resolve dead letters: %v", err)
	}
	if n, err := op.PurgeDeadLetters(ctx, store.DeadLetterFilter{}); err != nil || n == 0 {
		t.Errorf("bridge_operator cannot purge dead letters: %d %v", n, err)
	}
	if _, err := opDLs.Sweep(ctx, cat, nil, "cli", deadletter.ParkedSelection{All: true, Expire: true}); err != nil {
		t.Errorf("bridge_operator cannot expire parked children: %v", err)
	}
	if _, err := op.Prune(ctx, time.Now().Add(time.Hour), false, nil); err != nil {
		t.Errorf("bridge_operator cannot prune: %v", err)
	}
	// Whole months: the partitions of last year and the months ahead.
	if _, err := op.EnsurePartitions(ctx, time.Now().AddDate(-1, 0, 0)); err != nil {
		t.Errorf("bridge_operator cannot make monthly partitions: %v", err)
	}
	if months, err := op.DropMonths(ctx, time.Now().AddDate(0, -9, 0), false, nil, time.Second); err != nil || len(months) == 0 {
		t.Errorf("bridge_operator cannot drop months: %v %v", months, err)
	} else {
		for _, m := range months {
			if m.Kept != "" {
				t.Errorf("bridge_operator kept %s %s: %s", m.Table, m.Start, m.Kept)
			}
		}
	}
	if _, err := op.PruneTombstones(ctx, time.Now().Add(time.Hour), false, nil); err != nil {
		t.Errorf("bridge_operator cannot prune tombstones: %v", err)
	}
	if _, err := op.StrandedRows(ctx); err != nil {
		t.Errorf("bridge_operator cannot count the rows of the DEFAULT partitions: %v", err)
	}
	operator, err := pgx.Connect(ctx, as("bridge_operator"))
	if err != nil {
		t.Fatal(err)
	}
	defer operator.Close(ctx)
	for _, sql := range []string{`SELECT * FROM schedulehub.planner_notes`, `CREATE TABLE bridge.mine (id int)`, `TRUNCATE bridge.synced_records`, `DELETE FROM bridge.synced_records`} {
		_, err := operator.Exec(ctx, sql)
		denied("bridge_operator", err, sql)
	}
}

// roles.sql grants exactly the shipped catalog's target tables.
func TestRolesGrantTheCatalogTargetsOnly(t *testing.T) {
	roles, err := os.ReadFile("roles.sql")
	if err != nil {
		t.Fatal(err)
	}
	var granted []string
	for _, stmt := range regexp.MustCompile(`(?s)GRANT [A-Z, ]+ ON\s+([^;]*?)\s+TO bridge_user;`).FindAllStringSubmatch(string(roles), -1) {
		granted = append(granted, regexp.MustCompile(`schedulehub\.\w+`).FindAllString(stmt[1], -1)...)
	}
	cat, _ := testenv.Shipped(t)
	var targets []string
	for _, e := range cat.Entities() {
		targets = append(targets, e.Target.QualifiedName())
	}
	slices.Sort(granted)
	slices.Sort(targets)
	if !slices.Equal(granted, targets) {
		t.Errorf("roles.sql grants %v, the catalog's targets are %v", granted, targets)
	}
	if strings.Contains(string(roles), "ALL TABLES IN SCHEMA schedulehub") {
		t.Error("roles.sql grants every table of the schedulehub schema")
	}
}
