package auditlog_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// An export object store written by earlier versions (nats.go object
// store puts, roll-ups, a "checkpoint" object replaced in place) is
// hardened by the bootstrap and reads the same through the write-once
// store; the newest checkpoint is still found, and new writes work.
func TestExportStoreFromEarlierVersion(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx := context.Background()
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: shared.BucketAuditExport, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	sc := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "old"}
	big := bytes.Repeat([]byte("r"), 300<<10) // several chunks
	old := map[string][]byte{
		sc.TlogPrefix() + "tile/entries/000.p/2": []byte("two records"),
		sc.TlogPrefix() + "tile/entries/001":     big,
	}
	for k, v := range old {
		if _, err := obs.PutBytes(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	for _, cp := range []string{"sovkeys/audit/tenant/b2xk\n1\nAAAA\n\n— x\n", "sovkeys/audit/tenant/b2xk\n2\nBBBB\n\n— x\n"} {
		if _, err := obs.PutBytes(ctx, sc.CheckpointPath(), []byte(cp)); err != nil {
			t.Fatal(err)
		}
	}
	if err := mesh.Bootstrap(ctx, js, mesh.DefaultTopology(), []string{"default"}); err != nil {
		t.Fatalf("bootstrap on an earlier export store: %v", err)
	}
	b, err := auditlog.OpenObjectBucket(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range old {
		if got, err := b.Get(ctx, k); err != nil || !bytes.Equal(got, v) {
			t.Fatalf("%s after the upgrade: %d bytes, %v", k, len(got), err)
		}
	}
	if got, err := b.Get(ctx, sc.CheckpointPath()); err != nil || !bytes.Contains(got, []byte("\n2\n")) {
		t.Fatalf("checkpoint after the upgrade: %q %v", got, err)
	}
	var names []string
	if err := b.List(ctx, sc.TlogPrefix()+"tile/entries", func(n string) error { names = append(names, n); return nil }); err != nil || len(names) != 1 || names[0] != "001" {
		t.Fatalf("list: %v %v", names, err)
	}
	// New writes: once, and the old objects are not replaceable any more.
	if err := b.Put(ctx, sc.CheckpointHistoryKey(3), []byte("three")); err != nil {
		t.Fatal(err)
	}
	bigger := bytes.Repeat([]byte("n"), 3*128<<10+5) // four chunks
	if err := b.Put(ctx, sc.TlogPrefix()+"tile/entries/002", bigger); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Get(ctx, sc.TlogPrefix()+"tile/entries/002"); err != nil || !bytes.Equal(got, bigger) {
		t.Fatalf("multi-chunk object: %d bytes, %v", len(got), err)
	}
	if err := b.Put(ctx, sc.TlogPrefix()+"tile/entries/001", []byte("other")); err == nil {
		t.Fatal("an earlier object was replaced")
	}
	if _, err := obs.PutBytes(ctx, sc.CheckpointPath(), []byte("newer")); err == nil {
		t.Fatal("the old checkpoint object is still replaceable")
	}
}
