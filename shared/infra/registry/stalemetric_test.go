package registry

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// A stale watch shows on /metrics (alert RegistryWatchStale) and stops
// counting once it is current again.
func TestStaleWatchMetric(t *testing.T) {
	_, kv := freshBucket(t, shared.BucketKillSwitch)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := WatchBucket[string](ctx, kv, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, withRetryEvery(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	<-c.Ready()
	want := func(v int) {
		t.Helper()
		line := fmt.Sprintf(`sovkeys_registry_watches_stale{bucket=%q} %d`, shared.BucketKillSwitch, v)
		testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			rec := httptest.NewRecorder()
			metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			if !strings.Contains(rec.Body.String(), line) {
				return fmt.Errorf("/metrics lacks %s", line)
			}
			return nil
		})
	}
	want(0)
	c.stopWatch()
	want(1)
	want(0) // the watch restarted and caught up
}
