package auditlog

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// BenchmarkAuditVerifyTlog verifies a whole log of SOVKEYS_BENCH_RECORDS
// records (default 100,000; docs/BENCHMARKS.md ran 1,000,000) written as
// the exporter writes it (a flush and checkpoint every 1,000 records):
//
//	SOVKEYS_BENCH_RECORDS=1000000 go test ./shared/infra/auditlog -run '^$' -bench VerifyTlog -benchtime 1x
func BenchmarkAuditVerifyTlog(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("SOVKEYS_BENCH_RECORDS")); err == nil && v > 0 {
		n = v
	}
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	f := &tlogFixture{t: &testing.T{}, bucket: newMemBucket(), key: key, cps: map[int64][]byte{}}
	start := time.Now()
	for f.b.Size() < int64(n) {
		f.grow(min(1000, n-int(f.b.Size())))
	}
	built := float64(n) / time.Since(start).Seconds()
	var bytes int
	for _, d := range f.bucket.objects {
		bytes += len(d)
	}
	ctx := context.Background()
	for b.Loop() {
		t0 := time.Now()
		rep, err := VerifyTlog(ctx, f.bucket, testScope, f.trust(), TlogOptions{})
		if err != nil || rep.Size != int64(n) {
			b.Fatalf("%v %+v", err, rep)
		}
		b.ReportMetric(float64(n)/time.Since(t0).Seconds(), "verified-records/s")
	}
	b.ReportMetric(built, "built-records/s")
	b.ReportMetric(float64(bytes)/float64(n), "bucket-bytes/record")
	b.ReportMetric(float64(len(f.bucket.objects))*1000/float64(n), "objects/1k-records")
}

// BenchmarkAuditInclusionProof: checking one record's proof offline, with
// the checkpoint's P-384 signature ("proof") and the Merkle path alone
// ("path"), in a tree of 65,536+300 records.
func BenchmarkAuditInclusionProof(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	f := &tlogFixture{t: &testing.T{}, bucket: newMemBucket(), key: key, cps: map[int64][]byte{}}
	f.grow(65536 + 300)
	p, err := Prove(context.Background(), f.bucket, testScope, 4242, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("proof", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := p.Verify(f.trust()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("path", func(b *testing.B) {
		root, _ := f.b.Root()
		rp := make(tlog.RecordProof, len(p.Inclusion))
		for i, h := range p.Inclusion {
			copy(rp[i][:], h)
		}
		for b.Loop() {
			if err := tlog.CheckRecord(rp, f.b.Size(), root, 4241, tlog.RecordHash(p.Record)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
