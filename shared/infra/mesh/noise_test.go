package mesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// A stranger sends thousands of requests with made-up key store prefixes
// and addresses: they end up as ONE summary event in the one
// unauthenticated scope, with bounded counts, not as thousands of events
// in thousands of scopes.
func TestNoiseIsOneBoundedSummary(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	streams, err := EnsureAuditStreams(ctx, js, DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	stream := streams[0]
	n := NewNoiseAuditor(js, shared.AuditServiceGateway, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now)
	const floods = 10_000
	for i := range floods {
		n.Add(shared.API(fmt.Sprintf("xks.made-up-%d", i)), shared.CodeInvalidURIPath, fmt.Sprintf("198.51.%d.%d", i/256%256, i%256))
	}
	n.Flush(ctx)
	n.Flush(ctx) // nothing new: nothing published
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("%d audit events, want one summary", info.State.Msgs)
	}
	m, err := stream.GetLastMsgForSubject(ctx, shared.AuditSubject(shared.AuditServiceGateway, shared.AuditKindUnauthenticated, ""))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := shared.UnmarshalAuditEvent(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Params["total"] != strconv.Itoa(floods) || ev.Scope != "" || len(ev.Params) > maxNoiseKeys+3+noiseSamples {
		t.Fatalf("summary total %q scope %q with %d params", ev.Params["total"], ev.Scope, len(ev.Params))
	}
	if n.total != 0 || len(n.counts) != 0 || len(n.sources) != 0 {
		t.Fatal("counts kept after the summary was published")
	}
}
