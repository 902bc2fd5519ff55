package consumer

import (
	"testing"
	"time"
)

func TestNakDelayDoubles(t *testing.T) {
	for _, tt := range []struct {
		delivered uint64
		want      time.Duration
	}{
		{0, 5 * time.Second}, {1, 5 * time.Second}, {2, 10 * time.Second}, {3, 20 * time.Second},
		{7, 5 * time.Minute}, {1000, 5 * time.Minute},
	} {
		if got := nakDelay(5*time.Second, tt.delivered); got != tt.want {
			t.Errorf("nakDelay(5s, %d) = %v, want %v", tt.delivered, got, tt.want)
		}
	}
}
