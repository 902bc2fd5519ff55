// Package deploy embeds the SQL of the demo ScheduleHub target, so that tests and
// tools apply exactly the file operators read.
package deploy

import _ "embed"

// ScheduleHubSQL creates the demo target tables (schema schedulehub); idempotent.
//
//go:embed schedulehub.sql
var ScheduleHubSQL string
