package storetest_test

import (
	"testing"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/storetest"
)

// The memory store keeps the contract; internal/store runs the same cases against
// PostgreSQL.
func TestMemoryKeepsTheContract(t *testing.T) {
	storetest.Contract(t, func(_ *testing.T, cat *catalog.Catalog) storetest.Backend { return storetest.NewMemory(cat) })
}
