package mesh

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// An event whose de-duplication id someone published first is not
// "recorded": PublishAudit reports ErrAuditDuplicate so the caller fails
// closed instead of answering as if its event were durable.
func TestPublishAuditDuplicateIsAnError(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := EnsureAuditStreams(ctx, js, DefaultTopology()); err != nil {
		t.Fatal(err)
	}
	ev := func(id string) *shared.AuditEvent {
		return &shared.AuditEvent{RequestID: id, Kind: shared.AuditKindXKS, Scope: "s", API: shared.APIXKSEncrypt,
			Service: shared.AuditServiceKeyworker, Result: shared.ResultSuccess}
	}
	if err := PublishAudit(ctx, js, ev("fresh")); err != nil {
		t.Fatal(err)
	}
	burn := nats.NewMsg(shared.AuditSubject(shared.AuditServiceGateway, shared.AuditKindXKS, "s"))
	burn.Data = []byte("{}")
	burn.Header.Set(shared.HeaderMsgID, shared.AuditMsgID(shared.AuditServiceKeyworker, "victim"))
	if _, err := js.PublishMsg(ctx, burn); err != nil {
		t.Fatal(err)
	}
	if err := PublishAudit(ctx, js, ev("victim")); !errors.Is(err, ErrAuditDuplicate) {
		t.Fatalf("PublishAudit of a burnt id = %v, want ErrAuditDuplicate", err)
	}
	// A second publish of an event this call did not publish before is
	// refused the same way (a redelivered operation is not silently "done").
	if err := PublishAudit(ctx, js, ev("fresh")); !errors.Is(err, ErrAuditDuplicate) {
		t.Fatalf("second PublishAudit = %v, want ErrAuditDuplicate", err)
	}
}
