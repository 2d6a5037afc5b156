package audit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// Local storage stays bounded: numbered events leave the event stream, the
// log stream keeps at most LogKeepBatches batches per scope, and still
// every record reaches the transparency log, once, in order.
func TestAuditBoundedStorage(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	const keep = 40
	svc, _ := runAudit(t, nc, js, Config{MaxBatch: 5, LogKeepBatches: keep, EventPurgeEvery: 100 * time.Millisecond, EventKeep: time.Millisecond})
	sc := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "bounded"}
	var evs []*shared.AuditEvent
	for i := range 1500 {
		evs = append(evs, event(sc, []string{"gateway", "keyworker"}[i%2], i/2))
	}
	publishAsync(t, js, evs)
	obs, err := auditlog.OpenObjectBucket(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	rep := verified(t, obs, sc, auditKey(t, js), uint64(len(evs)))
	if rep.Last != uint64(len(evs)) {
		t.Fatalf("report %+v", rep)
	}
	ctx := context.Background()
	logs, err := js.Stream(ctx, auditlog.StreamLog)
	if err != nil {
		t.Fatal(err)
	}
	info, err := logs.Info(ctx, jetstream.WithSubjectFilter(sc.RecordSubject()))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[sc.RecordSubject()]; n > keep || n == 0 {
		t.Fatalf("log stream holds %d batches of the scope, want 1..%d", n, keep)
	}
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ev, err := js.Stream(ctx, shared.StreamAudit)
		if err != nil {
			return err
		}
		info, err := ev.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d numbered events still in the event stream", info.State.Msgs)
		}
		return nil
	})
	if svc.Snapshot().ExportBehind == 0 {
		t.Log("numbering never waited for export (export kept up)")
	}
}
