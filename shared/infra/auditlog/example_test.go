package auditlog_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
)

// dirBucket is a bucket in memory; a customer would use auditlog.NewS3Bucket.
type dirBucket map[string][]byte

func (d dirBucket) String() string { return "memory" }
func (d dirBucket) Put(_ context.Context, k string, b []byte) error {
	d[k] = b
	return nil
}
func (d dirBucket) Get(_ context.Context, k string) ([]byte, error) {
	if b, ok := d[k]; ok {
		return b, nil
	}
	return nil, auditlog.ErrNotFound
}
func (d dirBucket) List(_ context.Context, dir string, fn func(string) error) error {
	var names []string
	for k := range d {
		if n, ok := strings.CutPrefix(k, dir+"/"); ok && !strings.Contains(n, "/") {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		if err := fn(n); err != nil {
			return err
		}
	}
	return nil
}

// A customer verifies the export of its tenant's log with only the bucket
// and the audit public key; a deleted record fails naming its sequence.
func ExampleVerify() {
	ctx := context.Background()
	bucket := dirBucket{}
	tenant := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "vpc-0abc"}

	// What the audit service writes: three chained records and a checkpoint
	// (signed here by a software key standing in for the HSM).
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	prev := auditlog.Genesis
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	for seq := uint64(1); seq <= 3; seq++ {
		r := auditlog.FromEvent(&shared.AuditEvent{
			Version: 1, RequestID: fmt.Sprint("req-", seq), Kind: tenant.Kind, Scope: tenant.ID,
			API: shared.APIVSDecrypt, Service: "keyworker", Start: at, End: at, Result: shared.ResultSuccess,
		}, seq, prev)
		data, _ := r.Encode()
		_ = bucket.Put(ctx, tenant.RecordKey(seq), data)
		prev = auditlog.HashOf(data)
	}
	cp := auditlog.NewCheckpoint(tenant, 3, prev, at, spki)
	msg, _ := cp.SignedBytes()
	digest := sha256.Sum256(msg)
	sig, _ := ecdsa.SignASN1(rand.Reader, key, digest[:])
	cp.SetSignature(sig)
	data, _ := cp.Encode()
	_ = bucket.Put(ctx, tenant.CheckpointKey(3), data)

	// What the customer runs.
	pub, _ := auditlog.ParsePublicKey(auditlog.PublicKeyPEM(spki))
	rep, err := auditlog.Verify(ctx, auditlog.BucketSource{Bucket: bucket}, tenant, pub, auditlog.Options{})
	fmt.Println(rep.First, rep.Last, err)

	delete(bucket, tenant.RecordKey(2))
	_, err = auditlog.Verify(ctx, auditlog.BucketSource{Bucket: bucket}, tenant, pub, auditlog.Options{})
	var ve *auditlog.VerifyError
	fmt.Println(errors.As(err, &ve), ve.Seq, err)
	// Output:
	// 1 3 <nil>
	// true 2 audit log tenant:vpc-0abc: record 2: missing
}
