package audit

import (
	"context"
	"fmt"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
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
		evs = append(evs, event(sc, []string{"authn", "keyworker"}[i%2], i/2))
	}
	publishAsync(t, js, evs)
	// The audit service declares its export bucket as it starts.
	var obs auditlog.Bucket
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		b, err := auditlog.OpenObjectBucket(context.Background(), js)
		if err == nil {
			obs = b
		}
		return err
	})
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
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
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

// A version-1 log (stream without the per-scope limit, records in it) is
// tiled from record 1 before the limit is applied, and numbering goes on.
func TestAuditUpgradeFromVersion1(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: auditlog.StreamLog, Subjects: []string{auditlog.SubjectRecordPrefix + ">", auditlog.SubjectCheckpointPrefix + ">"},
		Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute, DenyDelete: true, DenyPurge: true,
	}); err != nil {
		t.Fatal(err)
	}
	sc := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "vpc-v1"}
	old := []*shared.AuditEvent{event(sc, "keyworker", 0), event(sc, "keyworker", 1)}
	prev := auditlog.Genesis
	var body []byte
	for i, ev := range old {
		r := auditlog.FromEvent(ev, uint64(i+1), prev)
		line, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			body = append(body, '\n')
		}
		body = append(body, line...)
		prev = auditlog.HashOf(line)
	}
	m := nats.NewMsg(sc.RecordSubject())
	m.Data = body
	m.Header.Set(auditlog.HeaderBatch, "1-2")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	svc, _ := runAudit(t, nc, js, Config{})
	more := []*shared.AuditEvent{event(sc, "keyworker", 2), event(sc, "authn", 2)}
	publishAsync(t, js, more)
	var obs auditlog.Bucket
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		b, err := auditlog.OpenObjectBucket(ctx, js)
		obs = b
		return err
	})
	rep := verified(t, obs, sc, auditKey(t, js), 4)
	if rep.First != 1 {
		t.Fatalf("report %+v", rep)
	}
	testkit.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		s, err := js.Stream(ctx, auditlog.StreamLog)
		if err != nil {
			return err
		}
		if got := s.CachedInfo().Config.MaxMsgsPerSubject; got != int64(svc.cfg.LogKeepBatches) {
			return fmt.Errorf("per-scope limit %d", got)
		}
		return nil
	})
}
