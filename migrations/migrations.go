// Package migrations embeds the SQL migrations of the bridge schema. The same files
// work with the standalone golang-migrate CLI:
//
//	migrate -path ./migrations -database 'pgx5://user@host:5432/db?x-migrations-table=syncflow_schema_migrations' up
package migrations

import "embed"

// FS holds NNNN_name.up.sql / NNNN_name.down.sql in golang-migrate's format.
//
//go:embed *.sql
var FS embed.FS

// Table is the version table golang-migrate keeps (in the connection's current
// schema, normally public), named so it never collides with another tool's.
const Table = "syncflow_schema_migrations"
