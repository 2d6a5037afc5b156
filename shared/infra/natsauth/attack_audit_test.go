package natsauth_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// The audit log under insiders (issue 20, item 6), tried with every
// credential: nobody purges or deletes the signer's state or the export
// objects, nobody but the audit service appends records. (What a keyworker
// credential can still write to the signer's KV changes nothing the HSM
// signs: services/keyworker TestAuditSignerStateCannotBeRewound.)
func TestAttackAuditLogUnderInsiders(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	signerStream := shared.KVStream(shared.BucketAuditSigner)
	exportStream := shared.ObjectStream(shared.BucketAuditExport)
	users := append(append(append([]string{}, services...), personUsers()...), shared.UserBootstrap)
	for _, user := range users {
		for _, s := range []string{signerStream, exportStream} {
			m.refusedPub(t, user, "purge", shared.JSStreamPurge+s)
			m.refusedPub(t, user, "delete a message", shared.JSStreamMsgDelete+s)
			m.refusedPub(t, user, "delete the stream", shared.JSStreamDelete+s)
			if user != shared.UserBootstrap { // it declares; JetStream refuses the softening (below)
				m.refusedPub(t, user, "reconfigure", shared.JSStreamUpdate+s)
			}
		}
		if user != natsauth.ServiceKeyworker {
			m.refusedPub(t, user, "write the signer state", shared.SubjectKVPrefix+shared.BucketAuditSigner+"."+pool+".tenant.eA")
		}
		if user != natsauth.ServiceAudit {
			m.refusedPub(t, user, "append to the audit log", shared.SubjectAuditRecordPrefix+"tenant.eA")
			m.refusedPub(t, user, "write an export object", "$O."+shared.BucketAuditExport+".M."+base64.URLEncoding.EncodeToString([]byte("tenant/eA/checkpoint")))
		}
	}

	// The streams refuse it whoever asks (root: every permission).
	_, root := m.connect(t, "root", nil)
	for _, name := range []string{signerStream, exportStream} {
		st, err := root.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		c := st.CachedInfo().Config
		if !c.DenyDelete || !c.DenyPurge || c.AllowRollup {
			t.Fatalf("%s is not append-only: %+v", name, c)
		}
		c.DenyDelete, c.DenyPurge = false, false
		if _, err := root.UpdateStream(ctx, c); err == nil {
			t.Fatalf("%s: hardening undone", name)
		}
		if err := st.Purge(ctx); err == nil {
			t.Fatalf("%s purged", name)
		}
	}

	// A keyworker credential may write the signer's KV, but never erase
	// its history: a KV purge is a roll-up, refused.
	_, kwJS := m.connect(t, natsauth.ServiceKeyworker, nil)
	kv, err := kwJS.KeyValue(ctx, shared.BucketAuditSigner)
	if err != nil {
		t.Fatal(err)
	}
	key := pool + ".tenant.eA"
	if _, err := kv.Put(ctx, key, []byte(`{"size":5}`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, key); err == nil {
		t.Fatal("keyworker credential purged the signer state's history")
	}
	if e, err := kv.Get(ctx, key); err != nil || string(e.Value()) != `{"size":5}` {
		t.Fatalf("signer state changed: %v", err)
	}

	// The audit credential writes export objects once: a second write,
	// a delete (a roll-up) or an appended info change nothing read.
	ctx, cancel = context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		t.Cleanup(cancel)
		return c
	}
	auditNC, auditJS := m.connect(t, natsauth.ServiceAudit, nil)
	b, err := auditlog.OpenObjectBucket(ctx, auditJS)
	if err != nil {
		t.Fatal(err)
	}
	const obj = "tenant/ZUE/tile/entries/000.p/1"
	orig := []byte("the record as exported")
	if err := b.Put(ctx, obj, orig); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, obj, orig); err != nil {
		t.Fatalf("idempotent rewrite: %v", err)
	}
	if err := b.Put(ctx, obj, []byte("another record")); err == nil {
		t.Fatal("export object overwritten")
	}
	obs, err := auditJS.ObjectStore(ctx, shared.BucketAuditExport)
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.Delete(short(), obj); err == nil {
		t.Fatal("export object deleted through the object store API")
	}
	if _, err := obs.PutBytes(short(), obj, []byte("replaced")); err == nil {
		t.Fatal("export object replaced through the object store API")
	}
	// Raw publishes without roll-up: an info marking it deleted, more chunks.
	info, err := obs.GetInfo(short(), obj)
	if err != nil {
		t.Fatalf("object info: %v", err)
	}
	{
		forged := *info
		forged.Deleted = true
		data, _ := jsonMarshal(forged)
		if _, err := auditJS.Publish(ctx, "$O."+shared.BucketAuditExport+".M."+base64.URLEncoding.EncodeToString([]byte(obj)), data); err != nil {
			t.Fatal(err)
		}
		if _, err := auditJS.Publish(ctx, "$O."+shared.BucketAuditExport+".C."+info.NUID, []byte("appended")); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := b.Get(ctx, obj); err != nil || !bytes.Equal(got, orig) {
		t.Fatalf("export object after the attacks: %q %v", got, err)
	}
	_ = auditNC.Flush()
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
