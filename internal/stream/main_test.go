package stream_test

import (
	"os"
	"testing"

	"github.com/syncflow/syncflow/internal/testenv"
)

// The fetchers, publishers and embedded servers the tests start must all stop.
func TestMain(m *testing.M) { os.Exit(testenv.LeakCheck(m.Run())) }
