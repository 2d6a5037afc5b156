package keyworker

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// Whoever can write KV sovkeys_audit_signer (any keyworker credential)
// rewinds it, deletes it or plants a state: the signer still refuses every
// tree that does not extend the last one its HSM signed, and restores KV.
// A token written by an earlier version (state in KV only) is adopted.
func TestAuditSignerStateCannotBeRewound(t *testing.T) {
	_, nc, js := natstest.Run(t)
	module, label, pin := runKeyworkers(t, nc, js, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	call := func(req auditlog.SignRequest) (auditlog.TlogSignResponse, error) {
		var resp auditlog.TlogSignResponse
		err := kwadmin.Call(ctx, nc, "default", auditlog.EndpointSign, req, &resp)
		return resp, err
	}
	sc := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "rewind"}
	key := auditlog.SignerStateKey("default", sc)
	if r, err := call(signReq(t, sc, tree(t, "a", 3), 0)); err != nil || r.Conflict {
		t.Fatalf("sign 3: %+v %v", r, err)
	}
	kv, err := js.KeyValue(ctx, shared.BucketAuditSigner)
	if err != nil {
		t.Fatal(err)
	}
	at3, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := call(signReq(t, sc, tree(t, "a", 5), 3)); err != nil || r.Conflict {
		t.Fatalf("sign 5: %+v %v", r, err)
	}
	sizeInKV := func() int64 {
		t.Helper()
		e, err := kv.Get(ctx, key)
		if err != nil {
			t.Fatalf("signer state not restored: %v", err)
		}
		var st auditlog.SignerState
		if err := json.Unmarshal(e.Value(), &st); err != nil {
			t.Fatal(err)
		}
		return st.Size
	}
	fork := tree(t, "b", 6) // shares nothing with "a" after record 0
	refused := func(name string) {
		t.Helper()
		for _, req := range []auditlog.SignRequest{signReq(t, sc, fork, 3), signReq(t, sc, fork, 0), signReq(t, sc, tree(t, "a", 4), 3)} {
			r, err := call(req)
			if err == nil && !r.Conflict {
				t.Fatalf("%s: a tree that does not extend the signed one was signed:\n%s", name, r.Checkpoint)
			}
			if err == nil && r.SignedSize != 5 {
				t.Fatalf("%s: conflict names size %d, not 5", name, r.SignedSize)
			}
		}
		if got := sizeInKV(); got != 5 {
			t.Fatalf("%s: KV holds size %d after the signer ran, not 5", name, got)
		}
	}

	// 1. Rewound to a genuine older state.
	if _, err := kv.Put(ctx, key, at3.Value()); err != nil {
		t.Fatal(err)
	}
	refused("rewound")
	// 2. Deleted (a KV delete is a write).
	if err := kv.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	refused("deleted")
	// 3. A planted state claiming a larger tree, not signed by this HSM.
	var st auditlog.SignerState
	_ = json.Unmarshal(at3.Value(), &st)
	st.Size = 100
	planted, _ := json.Marshal(st)
	if _, err := kv.Put(ctx, key, planted); err != nil {
		t.Fatal(err)
	}
	if r, err := call(signReq(t, sc, tree(t, "a", 7), 5)); err != nil || r.Conflict {
		t.Fatalf("planted state changed the signer's view: %+v %v", r, err)
	}

	// 4. A token written by an earlier version: the state was in KV only.
	h, err := OpenHSM(ctx, HSMConfig{ModulePath: module, TokenLabel: label, PIN: pin, Sessions: 1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.DestroyData(ctx, auditStateLabel(key)); err != nil {
		t.Fatal(err)
	}
	if v, err := h.ReadData(ctx, auditStateLabel(key)); err != nil || v != nil {
		t.Fatalf("data object not destroyed: %v", err)
	}
	if r, err := call(signReq(t, sc, tree(t, "a", 9), 7)); err != nil || r.Conflict {
		t.Fatalf("old data (state in KV only): 7 -> 9: %+v %v", r, err)
	}
	v, err := h.ReadData(ctx, auditStateLabel(key))
	if err != nil || v == nil {
		t.Fatalf("state not kept in the hsm: %v", err)
	}
	if err := json.Unmarshal(v, &st); err != nil || st.Size != 9 {
		t.Fatalf("hsm state: %s %v", v, err)
	}
	if _, err := kv.Put(ctx, key, at3.Value()); err != nil {
		t.Fatal(err)
	}
	if r, err := call(signReq(t, sc, fork, 3)); err == nil && !r.Conflict {
		t.Fatal("after the migration, a rewound KV let a fork be signed")
	}
}

// Where the token has CKM_EDDSA (SoftHSM 2.6 does), checkpoints carry an
// Ed25519 log signature too, which x/mod's note verifies with the key the
// pool publishes; the ECDSA signature still verifies as before.
func TestAuditCheckpointEd25519(t *testing.T) {
	_, nc, js := natstest.Run(t)
	module, label, pin := runKeyworkers(t, nc, js, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h, err := OpenHSM(ctx, HSMConfig{ModulePath: module, TokenLabel: label, PIN: pin, Sessions: 1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	sc := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "ed"}
	var r auditlog.TlogSignResponse
	if err := kwadmin.Call(ctx, nc, "default", auditlog.EndpointSign, signReq(t, sc, tree(t, "a", 3), 0), &r); err != nil || r.Conflict {
		t.Fatalf("sign: %+v %v", r, err)
	}
	var pk auditlog.PublicKeyResponse
	if err := kwadmin.Call(ctx, nc, "default", auditlog.EndpointPublicKey, struct{}{}, &pk); err != nil {
		t.Fatal(err)
	}
	pub, err := auditlog.ParsePublicKey(pk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := (auditlog.Trust{Deployment: "sovkeys.test", LogKey: pub}).OpenCheckpoint(r.Checkpoint, sc); err != nil {
		t.Fatalf("ECDSA log signature: %v", err)
	}
	if !h.SupportsEdDSA() {
		t.Skip("this SoftHSM has no CKM_EDDSA: checkpoints carry the ECDSA signature only")
	}
	kv, err := js.KeyValue(ctx, shared.BucketPKI)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, AuditEd25519PKIKey("default"))
	if err != nil {
		t.Fatalf("ed25519 audit key not published: %v", err)
	}
	v, err := note.NewVerifier(auditlog.Ed25519VerifierKey(auditlog.KeyName("sovkeys.test"), ed25519.PublicKey(e.Value())))
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(r.Checkpoint, note.VerifierList(v))
	if err != nil || len(n.Sigs) != 1 || len(n.UnverifiedSigs) != 1 {
		t.Fatalf("x/mod note.Open with the Ed25519 key: %v\n%s", err, r.Checkpoint)
	}
	// And it signs nothing but what the ECDSA key signs: a forged text fails.
	forged := bytes.Replace(r.Checkpoint, []byte("\n3\n"), []byte("\n4\n"), 1)
	if _, err := note.Open(forged, note.VerifierList(v)); err == nil {
		t.Fatal("a checkpoint with another size verified")
	}
}
