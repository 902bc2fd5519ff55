package service_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"
)

// An event with a field name of thousands of characters (more than an index
// row may hold) does not stop the unmapped fields from being recorded: the name
// is cut, and whatever the table refuses is dropped rather than tried forever.
func TestDriftSurvivesALongFieldName(t *testing.T) {
	e := newEnv(t, testenvNATS(t))
	e.start(nil)
	b := make([]byte, 1600)
	rand.Read(b)
	long := strings.ToUpper(hex.EncodeToString(b)) // 3200 characters
	e.publish("apismith.cdc.sites", fmt.Sprintf(`{"entity":"sites","op":"upsert","rowversion":"2026-01-01T00:00:01Z","data":{"CONTRACT":"S1","X%s":"v"}}`, long))
	e.eventually(`SELECT count(*) FROM schedulehub.sites`, "1", 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	e.publish("apismith.cdc.items", `{"entity":"items","op":"upsert","rowversion":"20260101000001","data":{"PART_NO":"P1","NEW_ERP_FIELD":"v"}}`)
	e.eventually(`SELECT count(*) FROM schedulehub.items`, "1", 10*time.Second)
	time.Sleep(2 * time.Second)
	got := e.query(`SELECT count(*) FROM bridge.unmapped_fields`)
	logs := e.logs.String()
	i := strings.Index(logs, "unmapped fields seen) failed")
	if i >= 0 {
		t.Logf("log: %s", logs[max(0, i-200):min(len(logs), i+400)])
	}
	t.Logf("rows in bridge.unmapped_fields: %s", got)
	if got == "0" {
		t.Errorf("one long field name stops drift from being recorded for every entity")
	}
}

// Unmapped fields are counted per record committed, not per attempt: bisecting
// a batch around a rejected row writes the other rows several times, and they
// count once each.
func TestDriftCountsRecordsNotAttempts(t *testing.T) {
	e := newEnv(t, testenvNATS(t))
	e.start(nil)() // creates the streams, then stops
	for i := 1; i <= 8; i++ {
		lead := "3"
		if i == 8 {
			lead = `"abc"`
		}
		e.publish("apismith.cdc.items", fmt.Sprintf(`{"entity":"items","op":"upsert","rowversion":"20260101000001","data":{"PART_NO":"P%d","LEAD_TIME_DAYS":%s,"FOO":"x"}}`, i, lead))
	}
	e.start(nil)
	e.eventually(`SELECT count(*) FROM schedulehub.items`, "7", 10*time.Second)
	// The seven records written count once each, however often bisection
	// wrote them; the rejected one does not (its attempts are rolled back).
	e.eventually(`SELECT seen_count FROM bridge.unmapped_fields WHERE field_name = 'FOO'`, "7", 10*time.Second)
	time.Sleep(time.Second)
	if got := e.query(`SELECT seen_count FROM bridge.unmapped_fields WHERE field_name = 'FOO'`); got != "7" {
		t.Errorf("drift counted %s sightings of FOO for the 7 records written (8 carried it, one rejected)", got)
	}
}
