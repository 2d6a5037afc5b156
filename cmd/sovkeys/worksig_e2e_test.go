package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// An insider holding authn's NATS credential (the one that may store work
// on a pool's queue) but not authn's work key: work it forges, work signed
// by another key and a stored copy of authn's own work are refused by the
// keyworker, audited in the pool's operator log, and never reach the HSM.
func TestForgedAndReplayedWorkRefused(t *testing.T) {
	_, js := operatorJS(t)
	anc, err := nats.Connect(testNode.natsURL, nats.UserCredentials(filepath.Join(testNode.dir, "creds", "authn.creds")),
		nats.CustomInboxPrefix(shared.InboxPrefix(shared.UserAuthn)))
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	authnJS, err := jetstream.New(anc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	signer, err := shared.LoadWorkSigner(filepath.Join(testNode.dir, "creds", shared.WorkKeyFile), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	foreignPath := filepath.Join(t.TempDir(), "foreign.workkey")
	if _, _, err := shared.EnsureWorkKey(foreignPath); err != nil {
		t.Fatal(err)
	}
	foreign, err := shared.LoadWorkSigner(foreignPath, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	stamp := fmt.Sprint(time.Now().UnixNano())
	work := func(id string) []byte {
		env := &shared.Envelope{
			Version: shared.EnvelopeVersion, ID: id, API: shared.APIXKSMetadata,
			Received: time.Now(), Deadline: time.Now().Add(30 * time.Second),
			ReplyTo: "sovkeys.reply.attacker", KeyStore: "/forged", KeyID: "k",
			Authz: &shared.Authz{CallerType: "sigv4", CallerID: "FORGED", Pool: "default", KeyLabel: "any", KeyStatus: "ENABLED"},
		}
		data, _ := env.Marshal()
		return data
	}
	publish := func(id string, data []byte, sig string) {
		t.Helper()
		msg := nats.NewMsg(shared.WorkSubject("default", shared.APIXKSMetadata))
		msg.Data = data
		if sig != "" {
			msg.Header.Set(shared.HeaderWorkSignature, sig)
		}
		if _, err := authnJS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	unsigned, wrongKey, replayed := "forged-"+stamp, "wrongkey-"+stamp, "replayed-"+stamp
	publish(unsigned, work(unsigned), "")
	publish(wrongKey, work(wrongKey), foreign.Sign("default", wrongKey, work(wrongKey)))
	data := work(replayed)
	sig := signer.Sign("default", replayed, data)
	publish(replayed, data, sig) // authn's own, once: served
	publish(replayed, data, sig) // a stored copy: refused

	want := map[string]string{unsigned: "not signed", wrongKey: "not pinned", replayed: "replayed"}
	stream, err := js.Stream(ctx, shared.StreamAudit)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{shared.SubjectAuditPrefix + "keyworker.operator." + shared.ScopeToken("default")}})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	testkit.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		batch, err := cons.FetchNoWait(100)
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			for _, ev := range auditEventsOf(m.Data()) {
				id := strings.TrimPrefix(ev.RequestID, "work-refused-")
				if reason, ok := want[id]; ok && ev.API == keyworker.APIWorkRefused {
					if ev.Result != shared.ResultDenied || !strings.Contains(ev.Reason, reason) {
						return fmt.Errorf("refusal of %s: %s %q, want denied %q", id, ev.Result, ev.Reason, reason)
					}
					seen[id] = true
				}
			}
		}
		if len(seen) < len(want) {
			return errors.New("refusals not all audited yet")
		}
		return nil
	})
}

// auditEventsOf decodes an audit message: one event, or a batch.
func auditEventsOf(data []byte) []*shared.AuditEvent {
	raws, err := shared.UnmarshalAuditBatch(data)
	if err != nil {
		raws = [][]byte{data}
	}
	var out []*shared.AuditEvent
	for _, r := range raws {
		if ev, err := shared.UnmarshalAuditEvent(r); err == nil {
			out = append(out, ev)
		}
	}
	return out
}
