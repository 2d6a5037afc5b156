package main

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// An operator change is applied only after its intent is durably audited:
// with the audit stream missing or full the change is refused unapplied;
// with it working, the intent is stored before the change runs and the
// result after.
func TestOperatorAuditFirst(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		setup   func(ctx context.Context, t *testing.T, js jetstream.JetStream)
		applied bool
	}{
		{name: "no audit stream", setup: func(context.Context, *testing.T, jetstream.JetStream) {}},
		{name: "audit stream full", setup: func(ctx context.Context, t *testing.T, js jetstream.JetStream) {
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: shared.StreamAudit,
				Subjects: []string{shared.SubjectAuditPrefix + ">"}, MaxMsgs: 1, Discard: jetstream.DiscardNew}); err != nil {
				t.Fatal(err)
			}
			if _, err := js.Publish(ctx, shared.AuditSubject(shared.AuditServiceCLI, shared.AuditKindOperator, ""), []byte("{}")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "audit stream working", applied: true, setup: func(ctx context.Context, t *testing.T, js jetstream.JetStream) {
			if _, err := mesh.EnsureAuditStreams(ctx, js, mesh.DefaultTopology()); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, _, js := natstest.Run(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tc.setup(ctx, t, js)
			kp, kerr := nkeys.CreateUser()
			if kerr != nil {
				t.Fatal(kerr)
			}
			o := &operator{getenv: func(string) string { return "tester" }, js: js, out: io.Discard, signer: roster.NewSigner("tester", kp, nil)}
			applied := false
			var intentBefore bool
			err := o.audited(ctx, "tenant.create", map[string]string{"tenant": "vpc-x"}, func() error {
				applied = true
				intentBefore = lastPhase(ctx, t, js) == phaseIntent
				return nil
			})
			if applied != tc.applied {
				t.Fatalf("applied = %v, want %v (err %v)", applied, tc.applied, err)
			}
			if !tc.applied {
				if !errors.Is(err, errIntentNotAudited) {
					t.Fatalf("err = %v, want errIntentNotAudited", err)
				}
				return
			}
			if err != nil || !intentBefore {
				t.Fatalf("err %v, intent stored before the change: %v", err, intentBefore)
			}
			if got := lastPhase(ctx, t, js); got != phaseResult {
				t.Fatalf("last operator event phase %q, want result", got)
			}
		})
	}
}

// lastPhase returns the phase of the newest operator-log event.
func lastPhase(ctx context.Context, t *testing.T, js jetstream.JetStream) string {
	t.Helper()
	s, err := js.Stream(ctx, shared.StreamAudit)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, shared.AuditSubject(shared.AuditServicePerson("tester"), shared.AuditKindOperator, ""))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := shared.UnmarshalAuditEvent(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	return ev.Params["phase"]
}
