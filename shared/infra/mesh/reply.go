package mesh

import (
	"context"
	"encoding/json"
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

// PublishAudit publishes an audit event and waits for JetStream's ack, so the
// event is durable before the caller is answered. The request id is the
// de-duplication id: a redelivered operation is recorded once per service.
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
	m.Header.Set(shared.HeaderMsgID, ev.Service+":"+ev.RequestID)
	tracing.Inject(ctx, m.Header)
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("mesh: publish audit event: %w", err)
	}
	return nil
}
