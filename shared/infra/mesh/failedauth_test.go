package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// A flood of failed SigV4 calls against two real key stores, from many
// addresses, becomes one record per key store per interval, its size
// bounded whatever the rate; events land in the audit stream.
func TestFailedAuthAuditorBoundsRecords(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := EnsureAuditStreams(ctx, js, DefaultTopology()); err != nil {
		t.Fatal(err)
	}
	var got []*shared.AuditEvent
	publish := func(ctx context.Context, ev *shared.AuditEvent) error {
		if err := PublishAudit(ctx, js, ev); err != nil {
			return err
		}
		got = append(got, ev)
		return nil
	}
	a := NewFailedAuthAuditor(js, publish, shared.AuditServiceAuthn, time.Hour, slog.New(slog.DiscardHandler), time.Now)
	for round, n := range []int{20_000, 200_000} {
		got = nil
		for i := range n {
			a.Add([]string{"/a/", "/b/"}[i%2], fmt.Sprintf("198.51.%d.%d", (i/256)%256, i%256))
		}
		a.Flush(ctx)
		if len(got) != 2 {
			t.Fatalf("round %d: %d records for 2 key stores", round, len(got))
		}
		for _, ev := range got {
			size := 0
			for k, v := range ev.Params {
				size += len(k) + len(v)
			}
			if ev.Kind != shared.AuditKindXKS || ev.API != APIFailedAuthSummary || ev.Params["total"] != fmt.Sprint(n/2) ||
				strings.Count(ev.Params["sources"], ",") != maxFailedAuthSources-1 || ev.Params["other_sources"] == "" || size > 4096 {
				t.Fatalf("round %d: summary %+v (params %d bytes)", round, ev, size)
			}
		}
	}
	a.Flush(ctx)
	if len(got) != 2 {
		t.Fatal("an empty interval published a record")
	}
}
