package store

import (
	"cmp"
	"os"
)

// adminURL is the server's postgres database, as testenv.AdminURL gives it
// (testenv imports this package, so the package's own tests cannot call it).
func adminURL() string {
	return cmp.Or(os.Getenv("SYNCFLOW_TEST_DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
}
