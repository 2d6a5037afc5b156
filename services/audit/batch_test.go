package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// publishBatch publishes evs as one batch message of service on subject
// with de-duplication id msgID, as mesh.AuditBatcher does (or as a
// forger would), and waits for the ack.
func publishBatch(t testing.TB, js jetstream.JetStream, subject, msgID string, failover bool, evs ...*shared.AuditEvent) {
	t.Helper()
	frames := make([][]byte, len(evs))
	for i, ev := range evs {
		data, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		frames[i] = data
	}
	m := nats.NewMsg(subject)
	m.Data = shared.MarshalAuditBatch(frames)
	m.Header.Set(shared.HeaderMsgID, msgID)
	m.Header.Set(mesh.HeaderAuditBatch, strconv.Itoa(len(evs)))
	if failover {
		m.Header.Set(mesh.HeaderFailover, "1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// Events published through the batcher (many at once: several share a
// message) and batches spanning scopes are each numbered exactly once in
// their own scope; a copy of a batch stored again on failover is not
// numbered twice; every batch message is acked once all its events are.
func TestAuditBatchesNumberedOnce(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	runAudit(t, nc, js, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := mesh.NewAuditBatcher(js, shared.AuditServiceKeyworker)
	go b.Run(ctx)

	a := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "/batch-a"}
	c := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "tenant-c"}
	var evs []*shared.AuditEvent
	for i := range 300 {
		sc := a
		if i%3 == 0 {
			sc = c
		}
		evs = append(evs, event(sc, shared.AuditServiceKeyworker, i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(evs))
	for _, ev := range evs {
		wg.Go(func() {
			pctx, pcancel := context.WithTimeout(ctx, time.Minute)
			defer pcancel()
			if err := b.Publish(pctx, ev); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("batcher publish: %v", err)
	}
	// One more batch by hand, spanning both scopes, then the same batch
	// again as a failover copy (another nonce: a retry on another sibling).
	mixed := []*shared.AuditEvent{event(a, shared.AuditServiceKeyworker, 1000), event(c, shared.AuditServiceKeyworker, 1001), event(a, shared.AuditServiceKeyworker, 1002)}
	subject := shared.AuditBatchSubjectOn(0, shared.AuditServiceKeyworker)
	publishBatch(t, js, subject, shared.AuditBatchMsgID(shared.AuditServiceKeyworker, "00112233445566778899aabbccddeeff"), false, mixed...)
	all := append(evs, mixed...)
	byScope := func(sc auditlog.Scope) []*shared.AuditEvent {
		var out []*shared.AuditEvent
		for _, ev := range all {
			if ev.Kind == sc.Kind && ev.Scope == sc.ID {
				out = append(out, ev)
			}
		}
		return out
	}
	waitRecorded(t, js, a, ids(byScope(a)))
	waitRecorded(t, js, c, ids(byScope(c)))
	publishBatch(t, js, subject, shared.AuditBatchMsgID(shared.AuditServiceKeyworker, "ffeeddccbbaa99887766554433221100"), true, mixed...)
	drained(t, js)
	for _, sc := range []auditlog.Scope{a, c} {
		recs, err := recorded(ctx, js, sc)
		if err != nil || len(recs) != len(byScope(sc)) {
			t.Fatalf("%s: %d records, want %d (%v)", sc, len(recs), len(byScope(sc)), err)
		}
	}
}

// A batch is one service's: events claiming another service, a kind the
// publisher may not write, or a batch whose de-duplication id is not a
// batch id of the publisher are recorded as forgery attempts in the
// operator log, in their place; the batch's honest events are numbered.
// A batch body that cannot be split is not numbered at all.
func TestForgedAuditBatches(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	runAudit(t, nc, js, Config{})
	ctx := context.Background()
	xks := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "/batch-victim"}
	op := auditlog.Scope{Kind: shared.AuditKindOperator}
	kw := shared.AuditBatchSubjectOn(0, shared.AuditServiceKeyworker)
	nonce := func(i int) string { return fmt.Sprintf("%032x", i) }

	honest := event(xks, shared.AuditServiceKeyworker, 1)
	claimsGateway := event(xks, shared.AuditServiceGateway, 2)
	unauthKind := event(xks, shared.AuditServiceKeyworker, 3)
	unauthKind.Kind, unauthKind.Scope = shared.AuditKindUnauthenticated, ""
	publishBatch(t, js, kw, shared.AuditBatchMsgID(shared.AuditServiceKeyworker, nonce(1)), false, honest, claimsGateway, unauthKind)
	// The gateway's batch id prefix on the keyworker's subject.
	stolenID := event(xks, shared.AuditServiceKeyworker, 4)
	publishBatch(t, js, kw, shared.AuditBatchMsgID(shared.AuditServiceGateway, nonce(2)), false, stolenID)
	// Not a batch at all.
	m := nats.NewMsg(kw)
	m.Data = []byte("SKA1 this is not a batch")
	m.Header.Set(shared.HeaderMsgID, shared.AuditBatchMsgID(shared.AuditServiceKeyworker, nonce(3)))
	m.Header.Set(mesh.HeaderAuditBatch, "1")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}

	waitRecorded(t, js, xks, ids([]*shared.AuditEvent{honest}))
	testkit.CheckFor(t, recordWait, pollEvery, func() error {
		recs, err := recorded(ctx, js, op)
		if err != nil {
			return err
		}
		if len(recs) != 3 {
			return fmt.Errorf("%d forgery records, want 3", len(recs))
		}
		for _, r := range recs {
			if r.Operation.API != string(APIAuditForgery) || r.Caller.ID != shared.AuditServiceKeyworker {
				t.Fatalf("forgery record %+v", r)
			}
		}
		return nil
	})
	// The malformed batch is terminated (kept in the stream for
	// inspection), the other two acked.
	drained(t, js)
	recs, err := recorded(ctx, js, xks)
	if err != nil || len(recs) != 1 {
		t.Fatalf("victim scope: %d records, want only the honest event (%v)", len(recs), err)
	}
}

// drained waits until the audit consumer has nothing pending or unacked.
func drained(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	testkit.CheckFor(t, drainWait, pollEvery, func() error {
		c, err := js.Consumer(ctx, shared.StreamAudit, shared.ConsumerAudit)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending+uint64(info.NumAckPending) > 0 {
			return fmt.Errorf("%d pending, %d unacked", info.NumPending, info.NumAckPending)
		}
		return nil
	})
}
