package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func TestOriginMismatch(t *testing.T) {
	good := func() *shared.AuditEvent {
		return event(auditlog.Scope{Kind: shared.AuditKindXKS, ID: "store/a"}, shared.AuditServiceKeyworker, 1)
	}
	for _, tc := range []struct {
		name    string
		subject func(ev *shared.AuditEvent) string
		msgID   func(ev *shared.AuditEvent) string
		mutate  func(ev *shared.AuditEvent)
		forged  bool
	}{
		{name: "genuine"},
		{name: "body claims another service", forged: true,
			subject: func(ev *shared.AuditEvent) string { return shared.AuditSubject("gateway", ev.Kind, ev.Scope) },
			msgID:   func(ev *shared.AuditEvent) string { return shared.AuditMsgID("gateway", ev.RequestID) }},
		{name: "scope differs from subject", forged: true,
			subject: func(ev *shared.AuditEvent) string { return shared.AuditSubject(ev.Service, ev.Kind, "store/b") }},
		{name: "kind differs from subject", forged: true,
			subject: func(ev *shared.AuditEvent) string {
				return shared.AuditSubject(ev.Service, shared.AuditKindTenant, ev.Scope)
			}},
		{name: "gateway writes a key store's log", forged: true,
			mutate: func(ev *shared.AuditEvent) { ev.Service = shared.AuditServiceGateway },
			msgID:  func(ev *shared.AuditEvent) string { return shared.AuditMsgID(shared.AuditServiceGateway, ev.RequestID) }},
		{name: "gateway writes the unauthenticated scope",
			mutate: func(ev *shared.AuditEvent) {
				ev.Service, ev.Kind, ev.Scope = shared.AuditServiceGateway, shared.AuditKindUnauthenticated, ""
			},
			msgID: func(ev *shared.AuditEvent) string { return shared.AuditMsgID(shared.AuditServiceGateway, ev.RequestID) }},
		{name: "gateway writes the operator log", forged: true,
			mutate: func(ev *shared.AuditEvent) {
				ev.Service, ev.Kind, ev.Scope = shared.AuditServiceGateway, shared.AuditKindOperator, ""
			},
			msgID: func(ev *shared.AuditEvent) string { return shared.AuditMsgID(shared.AuditServiceGateway, ev.RequestID) }},
		// The keyworker records the people's signed admin requests it applies.
		{name: "keyworker writes the operator log",
			mutate: func(ev *shared.AuditEvent) { ev.Kind, ev.Scope = shared.AuditKindOperator, "" }},
		// A person's events name that person, under that person's subject.
		{name: "person writes as themselves",
			mutate: func(ev *shared.AuditEvent) {
				ev.Service, ev.Kind, ev.Scope = shared.AuditServicePerson("alice"), shared.AuditKindOperator, ""
				ev.CallerType, ev.CallerID = shared.CallerTypePerson, "alice"
			},
			msgID: func(ev *shared.AuditEvent) string {
				return shared.AuditMsgID(shared.AuditServicePerson("alice"), ev.RequestID)
			}},
		{name: "person writes in another's name", forged: true,
			mutate: func(ev *shared.AuditEvent) {
				ev.Service, ev.Kind, ev.Scope = shared.AuditServicePerson("alice"), shared.AuditKindOperator, ""
				ev.CallerType, ev.CallerID = shared.CallerTypePerson, "bob"
			},
			msgID: func(ev *shared.AuditEvent) string {
				return shared.AuditMsgID(shared.AuditServicePerson("alice"), ev.RequestID)
			}},
		{name: "person writes a key store's log", forged: true,
			mutate: func(ev *shared.AuditEvent) {
				ev.Service, ev.CallerType, ev.CallerID = shared.AuditServicePerson("alice"), shared.CallerTypePerson, "alice"
			},
			msgID: func(ev *shared.AuditEvent) string {
				return shared.AuditMsgID(shared.AuditServicePerson("alice"), ev.RequestID)
			}},
		{name: "another service's dedupe id", forged: true,
			msgID: func(ev *shared.AuditEvent) string { return shared.AuditMsgID("authn", ev.RequestID) }},
		{name: "legacy subject without service", forged: true,
			subject: func(ev *shared.AuditEvent) string {
				return shared.SubjectAuditPrefix + ev.Kind + "." + shared.ScopeToken(ev.Scope)
			}},
		{name: "unauthenticated with a scope", forged: true,
			mutate: func(ev *shared.AuditEvent) {
				ev.Service, ev.Kind = shared.AuditServiceGateway, shared.AuditKindUnauthenticated
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := good()
			if tc.mutate != nil {
				tc.mutate(ev)
			}
			subject, msgID := ev.Subject(), shared.AuditMsgID(ev.Service, ev.RequestID)
			if tc.subject != nil {
				subject = tc.subject(ev)
			}
			if tc.msgID != nil {
				msgID = tc.msgID(ev)
			}
			why := originMismatch(subject, msgID, ev)
			if (why != "") != tc.forged {
				t.Fatalf("originMismatch = %q, want forged=%v", why, tc.forged)
			}
		})
	}
}

// A service that can publish audit events only under its own subject tries
// to (1) write an event in the keyworker's name and (2) burn the keyworker's
// de-duplication id so the real event is dropped. Both are recorded as
// forgery attempts in the operator log; the real keyworker's publish fails
// with ErrAuditDuplicate instead of reporting success.
func TestForgedAuditEvents(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	runAudit(t, nc, js, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	xks := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "store/victim"}
	op := auditlog.Scope{Kind: shared.AuditKindOperator}
	rawPublish := func(subject, msgID string, ev *shared.AuditEvent) {
		t.Helper()
		data, _ := json.Marshal(ev)
		m := nats.NewMsg(subject)
		m.Data = data
		m.Header.Set(shared.HeaderMsgID, msgID)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	// (1) gateway's subject, keyworker's name in the body.
	fake := event(xks, shared.AuditServiceKeyworker, 1)
	rawPublish(shared.AuditSubject(shared.AuditServiceGateway, xks.Kind, xks.ID), shared.AuditMsgID("keyworker", fake.RequestID), fake)
	// (2) a well-formed gateway event carrying the keyworker's dedupe id of request 2.
	burn := event(xks, shared.AuditServiceGateway, 2)
	rawPublish(burn.Subject(), shared.AuditMsgID(shared.AuditServiceKeyworker, burn.RequestID), burn)

	real := event(xks, shared.AuditServiceKeyworker, 2)
	if err := mesh.PublishAudit(ctx, js, real); !errors.Is(err, mesh.ErrAuditDuplicate) {
		t.Fatalf("PublishAudit after a burnt id = %v, want ErrAuditDuplicate", err)
	}
	genuine := event(xks, shared.AuditServiceKeyworker, 3)
	if err := mesh.PublishAudit(ctx, js, genuine); err != nil {
		t.Fatal(err)
	}
	waitRecorded(t, js, xks, ids([]*shared.AuditEvent{genuine}))
	testkit.CheckFor(t, recordWait, pollEvery, func() error {
		recs, err := recorded(ctx, js, op)
		if err != nil {
			return err
		}
		if len(recs) != 2 {
			return fmt.Errorf("%d forgery records, want 2", len(recs))
		}
		for _, r := range recs {
			if r.Operation.API != string(APIAuditForgery) || r.Service != shared.AuditServiceAudit || r.Caller.ID != shared.AuditServiceGateway {
				t.Fatalf("forgery record %+v", r)
			}
		}
		return nil
	})
}
