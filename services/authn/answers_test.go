package authn

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// A process holding a keyworker credential answers authn's unseal before
// the real keyworker, with a secret of its choosing correctly boxed to
// authn's reply key: unsigned, or signed with a key that is not the pool's
// pinned one, the answer is refused and nothing is cached. Signed with the
// pinned key (the real keyworker), it is used.
func TestUnsealAnswerMustBeSignedByThePinnedKey(t *testing.T) {
	t.Parallel()
	_, nc, js := natstest.Run(t)
	ctx := context.Background()
	topo := mesh.DefaultTopology()
	if err := mesh.Bootstrap(ctx, js, topo, []string{"default"}); err != nil {
		t.Fatal(err)
	}
	poolKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	attackerKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&poolKey.PublicKey)
	pins, err := mesh.BindPins(ctx, js, topo)
	if err != nil {
		t.Fatal(err)
	}
	if err := mesh.Pin(ctx, pins, shared.PKISigningKey("default"), der); err != nil {
		t.Fatal(err)
	}
	s := &Service{nc: nc, js: js, log: slog.New(slog.DiscardHandler), now: time.Now, secrets: newSecretCache(),
		answers: &kwadmin.AnswerKeys{KV: pins}}
	ks := &registry.Keystore{Prefix: "/victim", Pool: "default", Credentials: []registry.Credential{{AccessKeyID: "AKIDVICTIM", SealedSecret: []byte("sealed")}}}

	// answer serves unseal with secret, signed by key (nil: unsigned).
	answer := func(secret string, key *ecdsa.PrivateKey) *nats.Subscription {
		sub, err := nc.Subscribe(shared.KeyworkerAdminSubject("default", kwadmin.EndpointUnseal), func(m *nats.Msg) {
			var req kwadmin.SealRequest
			_ = json.Unmarshal(m.Data, &req)
			box, _ := kwadmin.SealReply(req.ReplyKey, kwadmin.EndpointUnseal, req.RequestID, []byte(secret))
			body, _ := json.Marshal(kwadmin.SealResponse{Box: box})
			reply := nats.NewMsg(m.Reply)
			reply.Data = body
			if key != nil {
				sig, _ := ecdsa.SignASN1(rand.Reader, key, kwadmin.AnswerDigest("default", kwadmin.EndpointUnseal, m.Header.Get(kwadmin.HeaderAnswerNonce), body))
				reply.Header.Set(kwadmin.HeaderAnswerSignature, base64.StdEncoding.EncodeToString(sig))
			}
			_ = m.RespondMsg(reply)
		})
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	for name, key := range map[string]*ecdsa.PrivateKey{"unsigned": nil, "signed by the attacker": attackerKey} {
		sub := answer("ATTACKER-CHOSEN-SECRET", key)
		if creds, err := s.credentials(ctx, ks, "AKIDVICTIM"); err == nil {
			t.Fatalf("%s answer used: %v", name, creds)
		}
		if _, ok := s.secrets.get(registry.KeystoreKey("/victim"), "AKIDVICTIM"); ok {
			t.Fatalf("%s answer cached", name)
		}
		_ = sub.Unsubscribe()
	}
	sub := answer("the-real-secret", poolKey)
	defer func() { _ = sub.Unsubscribe() }()
	creds, err := s.credentials(ctx, ks, "AKIDVICTIM")
	if err != nil || len(creds) != 1 || creds[0].SecretAccessKey != "the-real-secret" {
		t.Fatalf("the pool's signed answer: %v %v", creds, err)
	}
}

// With the pool's box key pinned (signed by its pinned signing key), the
// work authn queues carries a session HMAC whose key only the box key's
// holder opens.
func TestForwardSignsWithASessionBoxedToThePool(t *testing.T) {
	t.Parallel()
	_, nc, js := natstest.Run(t)
	ctx := context.Background()
	topo := mesh.DefaultTopology()
	if err := mesh.Bootstrap(ctx, js, topo, []string{"default"}); err != nil {
		t.Fatal(err)
	}
	poolKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&poolKey.PublicKey)
	boxKey, _ := ecdh.X25519().GenerateKey(rand.Reader)
	sig, _ := ecdsa.SignASN1(rand.Reader, poolKey, kwadmin.BoxKeyDigest("default", boxKey.PublicKey().Bytes()))
	bk, _ := json.Marshal(kwadmin.BoxKey{Public: boxKey.PublicKey().Bytes(), Sig: sig})
	pins, err := mesh.BindPins(ctx, js, topo)
	if err != nil {
		t.Fatal(err)
	}
	if err := mesh.Pin(ctx, pins, shared.PKISigningKey("default"), der); err != nil {
		t.Fatal(err)
	}
	if err := mesh.Pin(ctx, pins, kwadmin.PinBoxKey("default"), bk); err != nil {
		t.Fatal(err)
	}
	s := &Service{nc: nc, js: js, log: slog.New(slog.DiscardHandler), now: time.Now, signer: testWorkSigner(t),
		answers: &kwadmin.AnswerKeys{KV: pins}}
	env := &shared.Envelope{Version: shared.EnvelopeVersion, ID: "s1", API: shared.APIXKSEncrypt, ReplyTo: "r",
		Authz: &shared.Authz{Pool: "default"}}
	if err := s.forward(ctx, env); err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, shared.WorkStream("default"))
	if err != nil {
		t.Fatal(err)
	}
	stored, err := stream.GetLastMsgForSubject(ctx, shared.WorkSubject("default", shared.APIXKSEncrypt))
	if err != nil {
		t.Fatal(err)
	}
	h, ses := stored.Header.Get(shared.HeaderWorkSignature), stored.Header.Get(shared.HeaderWorkSession)
	if !strings.HasPrefix(h, "v2 ") || ses == "" {
		t.Fatalf("work not signed with a session: %q %q", h, ses)
	}
	open := func(key *ecdh.PrivateKey) shared.WorkOpener {
		return func(session string, boxed []byte) ([]byte, error) {
			var box kwadmin.ReplyBox
			if err := json.Unmarshal(boxed, &box); err != nil {
				return nil, err
			}
			return kwadmin.OpenReply(key, workSessionContext, session, &box)
		}
	}
	v := &shared.WorkVerifier{Pool: "default", Now: time.Now, Open: open(boxKey)}
	v.SetKeys([]string{s.signer.PublicKey()})
	if err := v.Verify("s1", stored.Data, h, ses, "S", 1); err != nil {
		t.Fatalf("session work refused by the pool: %v", err)
	}
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	w := &shared.WorkVerifier{Pool: "default", Now: time.Now, Open: open(other)}
	w.SetKeys([]string{s.signer.PublicKey()})
	if err := w.Verify("s1", stored.Data, h, ses, "S", 1); err == nil {
		t.Fatal("a holder of another box key verified the session")
	}
}
