package service

import (
	"context"
	"errors"
	"testing"

	"github.com/syncflow/syncflow/internal/apply"
	"github.com/syncflow/syncflow/internal/store"
)

// While the lease on the replica name is not held, the consumers write nothing:
// a batch meets an unavailable database, and is held.
func TestWriterWritesOnlyUnderTheLease(t *testing.T) {
	w := writer{lease: &store.Lease{}} // never taken
	_, err := w.ApplyBatch(context.Background(), apply.Batch{})
	if !errors.Is(err, apply.ErrUnavailable) {
		t.Fatalf("ApplyBatch without the lease: %v, want ErrUnavailable", err)
	}
}
