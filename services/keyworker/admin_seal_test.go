package keyworker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// Secrets never leave the keyworker in clear: seal and unseal answer only
// in a box encrypted to the requester's ephemeral key, and a request
// without one is refused.
func TestSealUnsealAnswersAreEncryptedToTheRequester(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworkers(t, nc, js, 1)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	ctx = withPins(ctx, t, js) // answers verified, seal requests boxed (answers_test.go)
	secret := []byte("SIGV4-SECRET-must-stay-in-the-box")
	aad := []byte("keystore=/x;akid=AKID")

	// Sealing is an admin action: a person's signed request. Unsigned, or
	// signed by someone without the role, it is refused.
	if err := kwadmin.Call(ctx, nc, "default", kwadmin.EndpointSeal, kwadmin.SealRequest{Data: bytes.Clone(secret), AAD: aad}, &kwadmin.SealResponse{}); shared.CodeOf(err) != shared.CodeAccessDenied {
		t.Fatalf("unsigned seal: %v", err)
	}
	if err := kwadmin.Call(asPerson(ctx, t, js, "carol", natsauth.RoleCustodian), nc, "default", kwadmin.EndpointSeal,
		kwadmin.SealRequest{Data: bytes.Clone(secret), AAD: aad}, &kwadmin.SealResponse{}); shared.CodeOf(err) != shared.CodeAccessDenied {
		t.Fatalf("custodian's seal: %v", err)
	}
	// A tap on every subject (what a pool's keyworker credential, or a
	// debug subscription on the server, would see) during the seal.
	tap, err := nc.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	var sealed kwadmin.SealResponse
	if err := kwadmin.Call(asPerson(ctx, t, js, "alice", natsauth.RoleAdmin), nc, "default", kwadmin.EndpointSeal, kwadmin.SealRequest{Data: bytes.Clone(secret), AAD: aad}, &sealed); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for {
		m, err := tap.NextMsg(200 * time.Millisecond)
		if err != nil {
			break
		}
		seen++
		if bytes.Contains(m.Data, secret) || bytes.Contains(m.Data, []byte(base64.StdEncoding.EncodeToString(secret))) {
			t.Fatalf("the secret crossed NATS in clear on %s", m.Subject)
		}
	}
	_ = tap.Unsubscribe()
	if seen < 2 {
		t.Fatalf("the tap saw %d messages: not a seal exchange", seen)
	}
	var opened kwadmin.SealResponse
	if err := kwadmin.Call(ctx, nc, "default", kwadmin.EndpointUnseal, kwadmin.SealRequest{Data: sealed.Data, AAD: aad}, &opened); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(opened.Data, secret) {
		t.Fatalf("unsealed %q", opened.Data)
	}

	// What a reader of the reply subject sees: a box, never the secret.
	key, err := kwadmin.NewReplyKey()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(kwadmin.SealRequest{Data: sealed.Data, AAD: aad, ReplyKey: key.PublicKey().Bytes(), RequestID: "r1"})
	msg, err := nc.RequestWithContext(ctx, shared.KeyworkerAdminSubject("default", shared.EndpointUnseal), raw)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(msg.Data, secret) {
		t.Fatal("the unseal answer carries the secret in clear")
	}
	var boxed kwadmin.SealResponse
	if err := json.Unmarshal(msg.Data, &boxed); err != nil || boxed.Box == nil || len(boxed.Data) != 0 {
		t.Fatalf("answer is not a box: %s", msg.Data)
	}
	if pt, err := kwadmin.OpenReply(key, shared.EndpointUnseal, "r1", boxed.Box); err != nil || !bytes.Equal(pt, secret) {
		t.Fatalf("box does not open to the secret: %v", err)
	}

	// A person's seal request with its secret in clear (an older CLI):
	// refused, the secret never reaches the HSM.
	clearCtx := asPerson(context.Background(), t, js, "dave", natsauth.RoleAdmin)
	if err := kwadmin.Call(clearCtx, nc, "default", kwadmin.EndpointSeal, kwadmin.SealRequest{Data: bytes.Clone(secret), AAD: aad},
		&kwadmin.SealResponse{}); shared.CodeOf(err) != shared.CodeValidation && !errors.Is(err, kwadmin.ErrAnswer) {
		t.Fatalf("seal with the secret in clear: %v", err)
	}

	// Without a reply key: refused, nothing unsealed (an unsigned seal is
	// refused before that).
	for ep, code := range map[string]shared.Code{shared.EndpointUnseal: shared.CodeValidation, shared.EndpointSeal: shared.CodeAccessDenied} {
		raw, _ = json.Marshal(kwadmin.SealRequest{Data: sealed.Data, AAD: aad})
		msg, err = nc.RequestWithContext(ctx, shared.KeyworkerAdminSubject("default", ep), raw)
		if err != nil {
			t.Fatal(err)
		}
		if msg.Header.Get(micro.ErrorCodeHeader) != string(code) || bytes.Contains(msg.Data, secret) {
			t.Fatalf("%s without a reply key answered: %q %q", ep, msg.Header, msg.Data)
		}
	}
}

// callTimeout bounds a test's admin calls.
const callTimeout = 30 * time.Second
