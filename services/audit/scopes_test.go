package audit

import (
	"context"
	"fmt"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// With KnownScopesOnly, an event naming a key store or tenant the
// registry never knew opens no log: it becomes a forgery record. A key
// store that exists, and a tenant that existed (deleted since), are logged.
func TestUnknownScopeRefused(t *testing.T) {
	_, nc, js := natstest.Run(t)
	ctx := context.Background()
	topo := mesh.DefaultTopology()
	ks, err := mesh.EnsureBucket(ctx, js, shared.BucketKeystores, "t", topo)
	if err != nil {
		t.Fatal(err)
	}
	tn, err := mesh.EnsureBucket(ctx, js, shared.BucketTenants, "t", topo)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Put(ctx, registry.KeystoreKey("/known/"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.Put(ctx, "vpc-gone", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := tn.Delete(ctx, "vpc-gone"); err != nil {
		t.Fatal(err)
	}
	runKeyworker(t, nc, js)
	svc, _ := runAudit(t, nc, js, Config{KnownScopesOnly: true})
	known := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "/known/"}
	gone := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "vpc-gone"}
	madeUp := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "made-up-scope-42"}
	evs := []*shared.AuditEvent{event(known, "authn", 1), event(gone, "keyworker", 1), event(madeUp, "keyworker", 1), event(madeUp, "authn", 2)}
	publishAsync(t, js, evs)
	waitRecorded(t, js, known, ids(evs[:1]))
	waitRecorded(t, js, gone, ids(evs[1:2]))
	testkit.CheckFor(t, recordWait, pollEvery, func() error {
		recs, err := recorded(ctx, js, auditlog.Scope{Kind: shared.AuditKindOperator})
		if err != nil {
			return err
		}
		if len(recs) != 2 {
			return fmt.Errorf("%d forgery records, want 2", len(recs))
		}
		return nil
	})
	if recs, err := recorded(ctx, js, madeUp); err != nil || len(recs) != 0 {
		t.Fatalf("a made-up scope was opened: %d records, %v", len(recs), err)
	}
	if svc.Snapshot().Forgeries < 2 {
		t.Fatal("forgeries not counted")
	}
}
