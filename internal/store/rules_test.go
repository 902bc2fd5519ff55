package store_test

import (
	"strings"
	"testing"

	"github.com/syncflow/syncflow/internal/mapping"
)

func TestCheckRulesAgainstTheTargets(t *testing.T) {
	f := newFixture(t)
	rule := func(entity, source, target, transformation string) mapping.Rule {
		return mapping.Rule{Entity: entity, SourceField: source, TargetField: target, Transformation: transformation}
	}
	good := []mapping.Rule{
		rule("items", "UNIT", "unit_meas", "trim|uppercase"),
		rule("items", "LEAD", "lead_time_days", "integer"),
		rule("items", "DESC", "description", "integer"), // text takes anything
		rule("work_orders", "LOT", "lot_size", "decimal"),
		rule("work_orders", "LOT2", "lot_size", "integer"),
		rule("work_orders", "NEED", "need_date", "date"),
		rule("work_orders", "START", "start_date", "timestamp"),
		rule("work_orders", "STATUS_CODE", "status", "boolean"),
		rule("sites", "TZ", "time_zone", ""),
		rule("suppliers", "X", "nowhere", "integer"), // not in the catalog: import refuses it elsewhere
	}
	if err := f.st.CheckRules(f.ctx, f.cat, good); err != nil {
		t.Errorf("good rules refused:\n%v", err)
	}
	for _, tc := range []struct {
		rule mapping.Rule
		want string
	}{
		{rule("items", "UNIT_MEAS", "unit_mesa", "trim"), "rule 1 (items UNIT_MEAS -> unit_mesa): schedulehub.items has no column unit_mesa (did you mean unit_meas?): its values would be dropped"},
		{rule("items", "X", "colour", ""), "schedulehub.items has no column colour: its values would be dropped"},
		{rule("items", "LEAD", "lead_time_days", "decimal"), "column lead_time_days is integer, which cannot take the fractions decimal keeps: use integer"},
		{rule("items", "LEAD", "lead_time_days", "boolean"), "column lead_time_days is integer, which cannot take the true/false values that boolean produces"},
		{rule("work_orders", "NEED", "lot_size", "date"), "column lot_size is numeric(14,4), which cannot take the dates that date produces"},
		{rule("work_orders", "START", "lot_size", "trim|timestamp"), "which cannot take the timestamps that timestamp produces"},
	} {
		err := f.st.CheckRules(f.ctx, f.cat, []mapping.Rule{tc.rule})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v\nwant %s", tc.rule, err, tc.want)
		}
	}
}
