package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"github.com/sovkeys/sovkeys/shared/testkit/s3test"
)

// S3 export to the central bucket and to a tenant's own bucket survives an
// outage of the S3 server during traffic: every record lands once it is
// back, the lag shows meanwhile, and both buckets verify with only the
// public key. Then a deleted or edited object fails verification naming
// its sequence number.
func TestAuditExportS3Outage(t *testing.T) {
	srv := s3test.RunServer(t)
	ctx := context.Background()
	srv.CreateBucket(ctx, t, "central-audit", true)
	srv.CreateBucket(ctx, t, "tenant-own-audit", true)
	_, nc, js := natstest.Run(t)
	runKeyworker(t, nc, js)

	tenants, err := registry.OpenTenants(ctx, js, mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	tenant := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "vpc-0s3"}
	if err := tenants.Create(ctx, &registry.Tenant{
		ID: tenant.ID, EKTName: "ekt-1", Pool: "default", AuditBucket: "tenant-own-audit",
		AuthMethods: []string{"mtls"}, Status: registry.TenantEnabled, Created: time.Now().UTC(),
	}); err != nil {
		t.Fatal(err)
	}
	store := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "s3store"}
	s3cfg := writeonce.S3Config{
		Endpoint: srv.Endpoint(), Region: s3test.Region, AccessKeyID: s3test.AccessKey,
		SecretAccessKey: s3test.SecretKey, UsePathStyle: true, Prefix: DefaultPrefix,
	}
	central := s3cfg
	central.Bucket = "central-audit"
	svc, _ := runAudit(t, nc, js, Config{
		Central:      CentralConfig{Backend: BackendS3, S3: central},
		TenantExport: TenantExportConfig{Enabled: true, S3: s3cfg},
	})
	evs := map[auditlog.Scope][]*shared.AuditEvent{}
	burst := func(from, to int) {
		var all []*shared.AuditEvent
		for i := from; i < to; i++ {
			for _, sc := range []auditlog.Scope{tenant, store} {
				ev := event(sc, "keyworker", i)
				evs[sc] = append(evs[sc], ev)
				all = append(all, ev)
			}
		}
		publishAsync(t, js, all)
	}
	burst(0, 100)
	pub := auditKey(t, js)
	centralBucket, err := auditlog.NewS3Bucket(ctx, central)
	if err != nil {
		t.Fatal(err)
	}
	own := s3cfg
	own.Bucket = "tenant-own-audit"
	ownBucket, err := auditlog.NewS3Bucket(ctx, own)
	if err != nil {
		t.Fatal(err)
	}
	verified(t, centralBucket, tenant, pub, 100)

	// Outage during traffic.
	srv.Stop()
	burst(100, 300)
	waitRecorded(t, js, tenant, ids(evs[tenant]))
	testkit.CheckFor(t, statsWait, pollEvery, func() error {
		st := svc.Snapshot()
		c := st.Export["central"]
		if c.Failures == 0 || c.Lag == 0 || c.LastError == "" {
			return fmt.Errorf("outage not visible in stats: %+v", c)
		}
		return nil
	})
	srv.Start()

	for _, sc := range []auditlog.Scope{tenant, store} {
		n := uint64(len(evs[sc]))
		rep := verified(t, centralBucket, sc, pub, n)
		if rep.Last != n {
			t.Fatalf("%s: central report %+v", sc, rep)
		}
	}
	verified(t, ownBucket, tenant, pub, uint64(len(evs[tenant])))
	if _, err := auditlog.VerifyTlog(ctx, ownBucket, store, trust(pub), auditlog.TlogOptions{}); err == nil {
		t.Fatal("a key store's log was exported to a tenant's bucket")
	}
	testkit.CheckFor(t, drainWait, slowPoll, func() error {
		for name, x := range svc.Snapshot().Export {
			if x.Lag != 0 {
				return fmt.Errorf("%s lag %d", name, x.Lag)
			}
		}
		return nil
	})

	// C2SP tlog-tiles: <prefix>/checkpoint is the newest signed checkpoint,
	// beside the write-once history, in both buckets.
	for _, b := range []struct {
		bucket auditlog.Bucket
		sc     auditlog.Scope
	}{{centralBucket, tenant}, {centralBucket, store}, {ownBucket, tenant}} {
		cp, err := b.bucket.Get(ctx, b.sc.CheckpointPath())
		if err != nil {
			t.Fatalf("%s %s: no checkpoint object: %v", b.bucket, b.sc, err)
		}
		th, _, err := trust(pub).OpenCheckpoint(cp, b.sc)
		if err != nil || th.Size != int64(len(evs[b.sc])) {
			t.Fatalf("%s %s: checkpoint of size %d: %v", b.bucket, b.sc, th.Size, err)
		}
		hist, err := b.bucket.Get(ctx, b.sc.CheckpointHistoryKey(th.Size))
		if err != nil || !bytes.Equal(hist, cp) {
			t.Fatalf("%s %s: checkpoint differs from the history's: %v", b.bucket, b.sc, err)
		}
	}

	// Tampering with exported objects: an entry bundle holds records
	// 1..256 of each log.
	client := srv.Client()
	key := func(sc auditlog.Scope) *string {
		return aws.String(DefaultPrefix + sc.TlogPrefix() + auditlog.BundlePath(0, auditlog.TileWidth))
	}
	mustFail := func(b auditlog.Bucket, sc auditlog.Scope, seq uint64) {
		t.Helper()
		_, err := auditlog.VerifyTlog(ctx, b, sc, trust(pub), auditlog.TlogOptions{})
		var ve *auditlog.VerifyError
		if !errors.As(err, &ve) || ve.Seq != seq {
			t.Fatalf("Verify after tampering with %d = %v", seq, err)
		}
	}
	if _, err := client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String("tenant-own-audit"), Key: key(tenant)}); err != nil {
		t.Fatal(err)
	}
	mustFail(ownBucket, tenant, 1)

	// An edit that keeps the object self-consistent (canonical records,
	// with a matching stored digest): only the tree catches it.
	orig, err := centralBucket.Get(ctx, store.TlogPrefix()+auditlog.BundlePath(0, auditlog.TileWidth))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := auditlog.SplitBundle(orig)
	if err != nil {
		t.Fatal(err)
	}
	r, err := auditlog.ParseRecord(entries[32])
	if err != nil {
		t.Fatal(err)
	}
	r.Result, r.Code = shared.ResultDenied, "access_denied"
	if entries[32], err = r.Encode(); err != nil {
		t.Fatal(err)
	}
	var edited []byte
	for _, e := range entries {
		edited, _ = auditlog.AppendBundle(edited, e)
	}
	sum := sha256.Sum256(edited)
	if _, err := client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String("central-audit"), Key: key(store), Body: bytes.NewReader(edited),
		Metadata: map[string]string{"sha256": hex.EncodeToString(sum[:])},
	}); err != nil {
		t.Fatal(err)
	}
	mustFail(centralBucket, store, 33)
	// A crude edit fails the stored digest.
	if _, err := client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String("central-audit"), Key: key(tenant), Body: bytes.NewReader([]byte(`{"v":1}`)),
	}); err != nil {
		t.Fatal(err)
	}
	mustFail(centralBucket, tenant, 1)
}
