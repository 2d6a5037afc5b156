package keyworker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// withPins returns ctx verifying keyworker answers against the pinned keys.
func withPins(ctx context.Context, t *testing.T, js jetstream.JetStream) context.Context {
	t.Helper()
	pins, err := mesh.BindPins(ctx, js, mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	return kwadmin.WithAnswerKeys(ctx, &kwadmin.AnswerKeys{KV: pins})
}

// A process that holds the pool's admin subjects but not its HSM (a stolen
// keyworker credential) answers unseal before the real keyworker: the
// caller refuses its answer, unsigned or signed by another key, and the
// pinned signing key cannot be replaced.
func TestAnswersAreSignedByThePoolsHSMKey(t *testing.T) {
	_, nc, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := mesh.Bootstrap(ctx, js, mesh.DefaultTopology(), []string{"default"}); err != nil { // the hardened pins bucket
		t.Fatal(err)
	}
	runKeyworkers(t, nc, js, 1)
	pinned := withPins(ctx, t, js)

	// The real keyworker's answers verify.
	var list []kwadmin.KeyInfo
	if err := kwadmin.Call(pinned, nc, "default", kwadmin.EndpointKeyList, struct{}{}, &list); err != nil {
		t.Fatalf("signed answer refused: %v", err)
	}

	// The impostor: answers first on the pool's unseal subject (no queue
	// group, so it always gets the request) with an attacker's secret.
	forged, _ := json.Marshal(kwadmin.SealResponse{Data: []byte("ATTACKER-CHOSEN-SECRET")})
	sub, err := nc.Subscribe(shared.KeyworkerAdminSubject("default", kwadmin.EndpointUnseal), func(m *nats.Msg) {
		reply := nats.NewMsg(m.Reply)
		reply.Data = forged
		reply.Header.Set(kwadmin.HeaderAnswerSignature, "MEUCIQDnot+a+real+signature==")
		_ = m.RespondMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for range 5 {
		var out kwadmin.SealResponse
		err := kwadmin.Call(pinned, nc, "default", kwadmin.EndpointUnseal, kwadmin.SealRequest{Data: []byte("blob"), AAD: []byte("a")}, &out)
		if err == nil || bytes.Contains(out.Data, []byte("ATTACKER")) {
			t.Fatalf("the impostor's unseal answer was used: %q %v", out.Data, err)
		}
		if !errors.Is(err, kwadmin.ErrAnswer) && shared.CodeOf(err) == "" {
			t.Fatalf("unexpected error: %v", err)
		}
	}

	// The pinned signing key and box key are write-once: a keyworker
	// credential's put is refused by the bucket.
	pins, err := js.KeyValue(ctx, shared.BucketPins)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pins.Put(ctx, shared.PKISigningKey("default"), []byte("attacker key")); err == nil {
		t.Fatal("the pinned signing key was replaced")
	}
	if _, err := pins.Put(ctx, kwadmin.PinBoxKey("default"), []byte("{}")); err == nil {
		t.Fatal("the pinned box key was replaced")
	}
}
