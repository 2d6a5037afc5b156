package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
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

// preSignedHops makes n's data directory look as a build before signed
// hops left it: no authn work key, no pins bucket (the pool's signing key
// only in sovkeys_pki, where it was put).
func preSignedHops(t *testing.T, n *node) {
	t.Helper()
	if err := os.Remove(filepath.Join(n.dir, "creds", shared.WorkKeyFile)); err != nil {
		t.Fatal(err)
	}
	js := rootJS(t, n)
	if err := js.DeleteKeyValue(context.Background(), shared.BucketPins); err != nil {
		t.Fatal(err)
	}
}

// checkSignedHopsAfterUpgrade: the node made and pinned its work key, and
// pinned the signing key an earlier build put in sovkeys_pki.
func checkSignedHopsAfterUpgrade(t *testing.T, n *node) {
	t.Helper()
	if _, err := shared.LoadWorkSigner(filepath.Join(n.dir, "creds", shared.WorkKeyFile), time.Now); err != nil {
		t.Fatalf("no work key after the upgrade: %v", err)
	}
	js := rootJS(t, n)
	ctx := context.Background()
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		pins, err := js.KeyValue(ctx, shared.BucketPins)
		if err != nil {
			return err
		}
		pinned, err := pins.Get(ctx, shared.PKISigningKey("default"))
		if err != nil {
			return err
		}
		pki, err := js.KeyValue(ctx, shared.BucketPKI)
		if err != nil {
			return err
		}
		old, err := pki.Get(ctx, shared.PKISigningKey("default"))
		if err != nil {
			return err
		}
		if !bytes.Equal(pinned.Value(), old.Value()) {
			return errors.New("the pinned signing key is not the one published before")
		}
		return nil
	})
}

// Every consumer of the running node takes only the subjects its service
// serves: none is declared without a subject filter.
func TestEveryConsumerHasASubjectFilter(t *testing.T) {
	js := rootJS(t, testNode)
	ctx := context.Background()
	names := js.StreamNames(ctx)
	n := 0
	for name := range names.Name() {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		infos := s.ListConsumers(ctx)
		for ci := range infos.Info() {
			n++
			if ci.Config.FilterSubject == "" && len(ci.Config.FilterSubjects) == 0 {
				t.Errorf("consumer %s on %s has no subject filter", ci.Name, name)
			}
		}
		if err := infos.Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no consumer found")
	}
}

// rootJS connects to n as a user without limits, minted from the node's
// trust seeds (what only the holder of DATA/trust can do).
func rootJS(t *testing.T, n *node) jetstream.JetStream {
	t.Helper()
	trust, err := natsauth.LoadOrCreate(filepath.Join(n.dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := trust.UserCreds("root-test", natsauth.Permissions{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "root.creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(n.natsURL, nats.UserCredentials(path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// The insider of issue 20: with the keyworker's credential, answer authn's
// unseal of a key store's SigV4 secret before the real keyworker, with a
// secret of the attacker's choosing boxed to authn's reply key, then call
// the gateway signing with it. authn refuses the answer (not signed by the
// pool's pinned HSM key): the attacker's calls fail, nothing is cached, and
// once the impostor stops, the real credential works.
func TestKeyworkerCredentialCannotPlantASigV4Secret(t *testing.T) {
	n := testNode
	prefix := "/planted-" + fmt.Sprint(time.Now().UnixNano()%1e9)
	real, c := n.newKeystore(t, prefix)
	kc, err := nats.Connect(n.natsURL, nats.UserCredentials(filepath.Join(n.dir, "creds", "keyworker.creds")),
		nats.CustomInboxPrefix(shared.InboxPrefix(shared.UserKeyworker)))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	planted := strings.Repeat("PLANTEDSECRET", 4)
	answered := make(chan struct{}, 64)
	sub, err := kc.Subscribe(shared.KeyworkerAdminSubject("default", kwadmin.EndpointUnseal), func(m *nats.Msg) {
		var req kwadmin.SealRequest
		if json.Unmarshal(m.Data, &req) != nil {
			return
		}
		box, err := kwadmin.SealReply(req.ReplyKey, kwadmin.EndpointUnseal, req.RequestID, []byte(planted))
		if err != nil {
			return
		}
		body, _ := json.Marshal(kwadmin.SealResponse{Box: box})
		reply := nats.NewMsg(m.Reply)
		reply.Data = body
		reply.Header.Set(kwadmin.HeaderAnswerSignature, "MEUCIQD+forged+signature+of+the+pool==")
		_ = m.RespondMsg(reply)
		answered <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := kc.Flush(); err != nil {
		t.Fatal(err)
	}
	attacker := n.client(c)
	attacker.Secret = planted
	ctx := context.Background()
	for range 5 {
		if _, err := attacker.Health(ctx); err == nil {
			t.Fatal("the gateway served a call signed with the planted secret")
		}
	}
	select {
	case <-answered:
	default:
		t.Fatal("the impostor never answered an unseal: the attack did not run")
	}
	_ = sub.Unsubscribe()
	_ = kc.Flush()
	waitUsable(t, real) // the real keyworker's signed answer
	if _, err := attacker.Health(ctx); err == nil {
		t.Fatal("the planted secret works after the real unseal")
	}
}
