package main_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/syncflow/syncflow/internal/testenv"
)

// SyncFlow on a three-node JetStream cluster with its streams stored three times
// (R3), two replicas of the service: the stream's leader is killed mid-run and
// started again, then a consumer's leader. Every event is published once (the
// publisher retries through the elections, with message ids), parents after
// many of their children, several versions per key, some deletes. The target
// ends in the state the newest versions give, nothing is dead-lettered, and
// nothing stays pending. (Messages the lost leader had handed out come back
// after the ack wait, as JetStream promises.)
func TestClusteredJetStreamLosesItsLeaders(t *testing.T) {
	cl := testenv.NATSCluster(t, 3)
	// Messages a lost leader had handed out come back after the ack wait:
	// shorten it so that the test need not wait a minute.
	w := newWorldOn(t, cl.URLs(), "SYNCFLOW_CATALOG="+shortAckWait(t, 2*time.Second))
	if out, code := w.cli("streams", "apply", "--replicas", "3"); code != 0 || !strings.Contains(out, "num_replicas 1 -> 3") {
		t.Fatalf("streams apply --replicas 3 (%d): %s", code, out)
	}
	args := []string{"--fetch-wait", "100ms", "--heartbeat", "300ms"}
	r1 := service(t, w.env, append([]string{"--replica", "c1"}, args...)...)
	r2 := service(t, w.env, append([]string{"--replica", "c2"}, args...)...)
	waitForLog(t, r1, "syncflow running")
	waitForLog(t, r2, "syncflow running")

	type ev struct{ subject, id, body string }
	var events []ev
	wantSites, wantCenters := map[string]string{}, map[string]string{}
	rng := rand.New(rand.NewPCG(7, 11))
	for s := range 40 {
		site := fmt.Sprintf("S%02d", s)
		var siteEvents, centerEvents []ev
		for v := 1; v <= 3; v++ {
			siteEvents = append(siteEvents, ev{"apismith.cdc.sites", fmt.Sprintf("%s-%d", site, v),
				fmt.Sprintf(`{"entity":"sites","op":"upsert","rowversion":"2026-11-27T08:00:0%dZ","data":{"CONTRACT":"%s","DESCRIPTION":"%s v%d"}}`, v, site, site, v)})
		}
		wantSites[site] = site + " v3"
		for c := range 10 {
			wc := fmt.Sprintf("WC%02d", c)
			key := site + "|" + wc
			deleted := rng.IntN(10) == 0
			for v := 1; v <= 3; v++ {
				op, data := "upsert", fmt.Sprintf(`"CONTRACT":"%s","WORK_CENTER_NO":"%s","DESCRIPTION":"%s v%d"`, site, wc, key, v)
				if v == 3 && deleted {
					op, data = "delete", fmt.Sprintf(`"CONTRACT":"%s","WORK_CENTER_NO":"%s"`, site, wc)
				}
				centerEvents = append(centerEvents, ev{"apismith.cdc.work_centers", fmt.Sprintf("%s-%d", key, v),
					fmt.Sprintf(`{"entity":"work_centers","op":"%s","rowversion":"2026-11-27T08:00:0%dZ","data":{%s}}`, op, v, data)})
			}
			if !deleted {
				wantCenters[key] = key + " v3"
			}
		}
		// Half the sites come after their work centers; versions of a key
		// may come out of order.
		group := append(siteEvents, centerEvents...)
		if s%2 == 0 {
			group = append(centerEvents, siteEvents...)
		}
		if rng.IntN(3) == 0 {
			rng.Shuffle(len(group), func(i, j int) { group[i], group[j] = group[j], group[i] })
		}
		events = append(events, group...)
	}

	publish := func(batch []ev) {
		t.Helper()
		for _, e := range batch {
			deadline := time.Now().Add(60 * time.Second)
			for {
				ctx, cancel := context.WithTimeout(w.ctx, 2*time.Second)
				_, err := w.js.PublishMsg(ctx, &nats.Msg{Subject: e.subject, Data: []byte(e.body), Header: nats.Header{"Nats-Msg-Id": {e.id}}})
				cancel()
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("publishing %s: %v", e.id, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	leader := func(get func(ctx context.Context) (string, error)) int {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			name, err := get(w.ctx)
			if err == nil && name != "" {
				return cl.Index(name)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no leader: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	streamLeader := func(ctx context.Context) (string, error) {
		s, err := w.js.Stream(ctx, "APISMITH_CDC")
		if err != nil {
			return "", err
		}
		info, err := s.Info(ctx)
		if err != nil || info.Cluster == nil {
			return "", err
		}
		return info.Cluster.Leader, nil
	}
	consumerLeader := func(ctx context.Context) (string, error) {
		c, err := w.js.Consumer(ctx, "APISMITH_CDC", "syncflow_cdc_work_centers")
		if err != nil {
			return "", err
		}
		info, err := c.Info(ctx)
		if err != nil || info.Cluster == nil {
			return "", err
		}
		return info.Cluster.Leader, nil
	}

	third := len(events) / 3
	publish(events[:third])
	i := leader(streamLeader)
	t.Logf("stopping the stream leader n%d", i+1)
	cl.Stop(i)
	publish(events[third : 2*third])
	cl.Start(i)
	j := leader(consumerLeader)
	t.Logf("stopping the work centers consumer's leader n%d", j+1)
	cl.Stop(j)
	publish(events[2*third:])
	cl.Start(j)

	wantRows := func(m map[string]string) string {
		var rows []string
		for k, v := range m {
			rows = append(rows, k+"|"+v)
		}
		slices.Sort(rows)
		return strings.Join(rows, "\n")
	}
	eventually(t, w.conn, `SELECT contract || '|' || description FROM schedulehub.sites ORDER BY 1`, wantRows(wantSites), r1)
	eventually(t, w.conn, `SELECT contract || '|' || work_center_no || '|' || description FROM schedulehub.work_centers ORDER BY 1`, wantRows(wantCenters), r1)
	if got := w.query(`SELECT count(*) FROM bridge.failed_records`); got != "0" {
		t.Errorf("%s dead letters:\n%s", got, w.query(`SELECT stage_failed, error_message FROM bridge.failed_records`))
	}
	eventually(t, w.conn, `SELECT count(*) FROM bridge.pending_children`, "0", r1)
	for _, durable := range []string{"syncflow_cdc_sites", "syncflow_cdc_work_centers"} {
		c, err := w.js.Consumer(w.ctx, "APISMITH_CDC", durable)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			info, err := c.Info(w.ctx)
			if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s still has work: %+v %v", durable, info, err)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	var _ jetstream.JetStream = w.js
}
