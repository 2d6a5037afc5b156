package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"log/slog"
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
