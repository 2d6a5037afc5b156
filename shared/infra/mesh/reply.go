package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/tracing"
)

// NewReply builds the core-NATS reply to a gateway: the response body on
// success, or the error's stable code and caller-safe message in headers.
func NewReply(replyTo, requestID string, body []byte, err error) *nats.Msg {
	m := nats.NewMsg(replyTo)
	m.Header.Set(shared.HeaderRequestID, requestID)
	if err != nil {
		m.Header.Set(shared.HeaderErrorCode, string(shared.CodeOf(err)))
		m.Header.Set(shared.HeaderErrorMessage, shared.MessageOf(err))
		return m
	}
	m.Data = body
	return m
}

// ReplyErr returns the error carried by a reply, or nil.
func ReplyErr(m *nats.Msg) error {
	code := m.Header.Get(shared.HeaderErrorCode)
	if code == "" {
		return nil
	}
	return &shared.Error{Code: shared.Code(code), Message: m.Header.Get(shared.HeaderErrorMessage)}
}

// ErrAuditDuplicate: JetStream answered an audit event as a duplicate of
// a message this call did not publish. Someone published that id first (a
// forged event meant to suppress the real one), so the event is NOT known
// to be recorded and the caller must fail closed.
var ErrAuditDuplicate = errors.New("mesh: audit event reported as duplicate")

// auditAttempts bounds PublishAudit's attempts when an ack is lost.
const auditAttempts = 3

// PublishAudit publishes an audit event on its service's audit subject and
// waits for JetStream's ack, so the event is durable before the caller is
// answered. The de-duplication id is service:request id, so a retry whose
// first ack was lost is stored once. A duplicate ack on the first attempt
// means the id was taken before this call: ErrAuditDuplicate.
func PublishAudit(ctx context.Context, js jetstream.JetStream, ev *shared.AuditEvent) error {
	ev.Version = shared.AuditEventVersion
	if err := ev.Validate(); err != nil {
		return err
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("mesh: audit event: %w", err)
	}
	m := nats.NewMsg(ev.Subject())
	m.Data = data
	m.Header.Set(shared.HeaderMsgID, shared.AuditMsgID(ev.Service, ev.RequestID))
	tracing.Inject(ctx, m.Header)
	mayBeStored := false // an earlier attempt of this call may have landed
	for attempt := 1; ; attempt++ {
		ack, err := js.PublishMsg(ctx, m)
		switch {
		case err == nil && ack.Duplicate && !mayBeStored:
			return fmt.Errorf("%w: %s", ErrAuditDuplicate, m.Header.Get(shared.HeaderMsgID))
		case err == nil:
			return nil
		case attempt < auditAttempts && ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)):
			mayBeStored = true // outcome unknown: the same id again is stored at most once
		case attempt < auditAttempts && ctx.Err() == nil && errors.Is(err, jetstream.ErrNoStreamResponse):
			// No stream answered: nothing was stored; try again.
		default:
			return fmt.Errorf("mesh: publish audit event: %w", err)
		}
	}
}
