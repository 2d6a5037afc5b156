package audit

import (
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// Origin of events
//
// An event's body says which service wrote it, but any service could write
// any body. What the audit service can verify is the subject: each service's
// NATS user may publish only under sovkeys.audit.<its service>. (natsauth),
// so the publisher is the subject's service token. An event is numbered as
// written only when its body agrees with its subject (service, kind, scope),
// the service may write that kind, and its de-duplication id is the one that
// service's PublishAudit sets (so one service cannot burn another's id).
// Anything else is recorded, in place of the event, as a forgery attempt in
// the operator scope, where the operator sees who tried what.

// APIAuditForgery is the API of a forgery record.
const APIAuditForgery shared.API = "audit.forgery"

// verifyOrigin returns ev when its origin checks out, or else the forgery
// record that takes its place.
func (s *Service) verifyOrigin(m jetstream.Msg, md *jetstream.MsgMetadata, ev *shared.AuditEvent) (*shared.AuditEvent, bool) {
	why := originMismatch(m.Subject(), m.Headers().Get(shared.HeaderMsgID), ev)
	if why == "" {
		return ev, true
	}
	service, _, _, _ := shared.ParseAuditSubject(m.Subject())
	s.count(func(st *Stats) { st.Forgeries++ })
	s.log.Warn("forged audit event recorded as a forgery attempt", "subject", m.Subject(),
		"publisher", service, "claimed_service", ev.Service, "request_id", ev.RequestID, "why", why)
	return forgeryRecord(m.Subject(), service, md, ev, why), false
}

// originMismatch says why an event's body does not match its origin ("" if
// it does).
func originMismatch(subject, msgID string, ev *shared.AuditEvent) string {
	service, kind, scope, err := shared.ParseAuditSubject(subject)
	if err != nil {
		return "subject is not sovkeys.audit.<service>.<kind>.<scope>"
	}
	if why := eventMismatch(service, ev); why != "" {
		return why
	}
	switch {
	case ev.Kind != kind || ev.Scope != scope:
		return "body kind/scope differ from the subject's"
	case msgID != shared.AuditMsgID(service, ev.RequestID):
		return "de-duplication id is not " + service + "'s"
	}
	return ""
}

// eventMismatch says why service may not have written ev ("" if it may):
// the checks an event gets whether it came alone or in a batch.
func eventMismatch(service string, ev *shared.AuditEvent) string {
	switch {
	case ev.Service != service:
		return "body claims service " + strconv.Quote(ev.Service) + " but " + service + " published it"
	case !shared.AuditKindAllowed(service, ev.Kind):
		return service + " may not write " + strconv.Quote(ev.Kind) + " events"
	case ev.Kind == shared.AuditKindUnauthenticated && ev.Scope != "":
		return "unauthenticated events have one scope"
	}
	if person, ok := shared.PersonOfAuditService(service); ok && (ev.CallerID != person || ev.CallerType != shared.CallerTypePerson) {
		return "person " + strconv.Quote(person) + " published an event naming " + strconv.Quote(ev.CallerType+" "+ev.CallerID)
	}
	return ""
}

// forgeryRecord is the operator-log event recording a forged one. Its
// request id is derived from the stream sequence, so a redelivery is
// recognised as the same record.
func forgeryRecord(subject, publisher string, md *jetstream.MsgMetadata, ev *shared.AuditEvent, why string) *shared.AuditEvent {
	return &shared.AuditEvent{
		Version:   shared.AuditEventVersion,
		RequestID: "forgery-" + strconv.FormatUint(md.Sequence.Stream, 10),
		Kind:      shared.AuditKindOperator, API: APIAuditForgery, Service: shared.AuditServiceAudit,
		Start: md.Timestamp, End: md.Timestamp,
		CallerType: "service", CallerID: publisher,
		Result: shared.ResultDenied, Code: shared.CodeAccessDenied, Reason: why,
		Params: map[string]string{
			"subject": subject, "claimed_service": ev.Service, "claimed_kind": ev.Kind,
			"claimed_scope": ev.Scope, "claimed_request_id": ev.RequestID, "claimed_api": string(ev.API),
		},
	}
}
