package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/mod/sumdb/note"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog/witness"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// Two witnesses cosign every checkpoint; a verifier requiring both accepts
// the log, one requiring a third does not.
func TestAuditWitnessCosignatures(t *testing.T) {
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)
	var pk auditlog.PublicKeyResponse
	if err := kwadmin.Call(context.Background(), nc, "default", auditlog.EndpointPublicKey, struct{}{}, &pk); err != nil {
		t.Fatal(err)
	}
	pub, err := auditlog.ParsePublicKey(pk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	var vs []note.Verifier
	for i := range 2 {
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		w, err := witness.New(witness.Config{
			Name: "witness.test/w" + string(rune('a'+i)), Key: k, Deployment: DefaultDeployment, LogKey: pub, StateDir: t.TempDir(),
		}, slog.New(slog.DiscardHandler), time.Now)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(w.Handler())
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
		v, err := auditlog.ParseCosignerVKey(w.VKey())
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	runAudit(t, nc, js, Config{Witnesses: urls})
	sc := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "vpc-witnessed"}
	var evs []*shared.AuditEvent
	for i := range 300 {
		evs = append(evs, event(sc, "keyworker", i))
	}
	publishAsync(t, js, evs[:100])
	var obs auditlog.Bucket
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		b, err := auditlog.OpenObjectBucket(context.Background(), js)
		obs = b
		return err
	})
	tr := auditlog.Trust{Deployment: DefaultDeployment, LogKey: pub, Witnesses: vs, Quorum: 2}
	wait := func(n int64) {
		testkit.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
			rep, err := auditlog.VerifyTlog(context.Background(), obs, sc, tr, auditlog.TlogOptions{})
			if err != nil {
				return err
			}
			if rep.Size != n || len(rep.Cosigners) != 2 {
				return errNoRecords
			}
			return nil
		})
	}
	wait(100)
	publishAsync(t, js, evs[100:]) // the witnesses check consistency 100 -> 300
	wait(300)
	// The on-demand checkpoint is the stored one, cosignatures included.
	cp, err := svcSigner(t, nc, sc)
	if err != nil {
		t.Fatal(err)
	}
	if _, cos, err := (auditlog.Trust{Deployment: DefaultDeployment, LogKey: pub, Witnesses: vs, Quorum: 2}).OpenCheckpoint(cp, sc); err != nil || len(cos) != 2 {
		t.Fatalf("on-demand checkpoint: %d cosignatures, %v\n%s", len(cos), err, cp)
	}
	tr.Quorum = 3
	if _, err := auditlog.VerifyTlog(context.Background(), obs, sc, tr, auditlog.TlogOptions{}); err == nil {
		t.Fatal("a quorum of 3 was met by 2 witnesses")
	}
}

// svcSigner asks the running audit service for sc's checkpoint, as
// `sovkeys audit checkpoint` does.
func svcSigner(t *testing.T, nc *nats.Conn, sc auditlog.Scope) ([]byte, error) {
	t.Helper()
	req, err := json.Marshal(auditlog.CheckpointRequest{Kind: sc.Kind, Scope: sc.ID})
	if err != nil {
		return nil, err
	}
	m, err := nc.Request(auditlog.SubjectControlPrefix+"."+auditlog.EndpointCheckpoint, req, 20*time.Second)
	if err != nil {
		return nil, err
	}
	return m.Data, nil
}
