// Package streams embeds the JetStream stream and consumer definitions and the entity
// catalog. The JSON files are in the server's wire format, so the same files work with
// `nats stream add --config` and `nats consumer add STREAM --config`.
package streams

import "embed"

// FS holds <STREAM>.json, the advisory consumer and catalog.yaml; the
// consumers of the entities are built from the catalog.
//
//go:embed *.json consumers catalog.yaml
var FS embed.FS

// Advisories is the stream that keeps JetStream's max-deliveries advisories for the
// two streams (event.Realtime and event.Backfill); AdvisoriesConsumer is SyncFlow's consumer of it.
const (
	Advisories         = "SYNCFLOW_ADVISORIES"
	AdvisoriesConsumer = "max_deliveries"
)

// CatalogFile is the name of the entity catalog inside FS.
const CatalogFile = "catalog.yaml"
