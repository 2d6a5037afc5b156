package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

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

// auditTry bounds one attempt of an audit publish on one sibling: longer
// than a request-path try (the audit stream is on disk), short enough to
// fail over within a call's budget.
const auditTry = 200 * time.Millisecond

// PublishAudit publishes an audit event on its service's audit subject of
// an audit-stream sibling and waits for JetStream's ack, so the event is
// durable before the caller is answered. The de-duplication id is
// service:request id, so a retry on the same sibling whose first ack was
// lost is stored once (a copy on two siblings is the audit service's to
// drop: siblings.go). A duplicate ack on a sibling this call had not tried
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
	return publishAuditData(ctx, js, ev, data)
}

// publishAuditData publishes ev, already marshalled as data, alone.
func publishAuditData(ctx context.Context, js jetstream.JetStream, ev *shared.AuditEvent, data []byte) error {
	m := nats.NewMsg(ev.Subject())
	m.Data = data
	id := shared.AuditMsgID(ev.Service, ev.RequestID)
	m.Header.Set(shared.HeaderMsgID, id)
	tracing.Inject(ctx, m.Header)
	return publishAuditMsg(ctx, js, m, ev.RequestID, func(i int) string {
		return shared.AuditSubjectOn(i, ev.Service, ev.Kind, ev.Scope)
	})
}

// publishAuditMsg publishes an audit message (one event or a batch) on
// the sibling key picks and waits for its ack.
func publishAuditMsg(ctx context.Context, js jetstream.JetStream, m *nats.Msg, key string, subject func(int) string) error {
	_, err := siblingPublish{
		key:     key,
		subject: subject,
		stream:  func(i int) string { return shared.SiblingStream(shared.StreamAudit, i) },
		perTry:  auditTry,
		// Hedged at what the sibling normally needs: the audit service
		// numbers a copy and its original once, whichever lands first
		// (services/audit: the copy watch).
		hedgeFloor: 0,
		accept: func(ack *jetstream.PubAck, again bool) error {
			if ack.Duplicate && !again {
				return fmt.Errorf("%w: %s", ErrAuditDuplicate, m.Header.Get(shared.HeaderMsgID))
			}
			return nil
		},
	}.publish(ctx, js, m)
	if err != nil && !errors.Is(err, ErrAuditDuplicate) {
		return fmt.Errorf("mesh: publish audit event: %w", err)
	}
	return err
}
