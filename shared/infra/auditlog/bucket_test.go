package auditlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"github.com/sovkeys/sovkeys/shared/testkit/s3test"
)

// Both real backends: write-once/idempotent Put, Get, List by directory,
// and a log that verifies from each.
func TestBuckets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := s3test.RunServer(t)
	srv.CreateBucket(ctx, t, "audit-central", true)
	s3b, err := NewS3Bucket(ctx, writeonce.S3Config{
		Endpoint: srv.Endpoint(), Region: s3test.Region, Bucket: "audit-central", Prefix: "audit/",
		AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey, UsePathStyle: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, _, js := natstest.Run(t)
	obs, err := NewObjectBucket(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []Bucket{s3b, obs} {
		t.Run(b.String(), func(t *testing.T) {
			sc := Scope{Kind: shared.AuditKindXKS, ID: "a/b"}
			if err := b.Put(ctx, sc.RecordKey(2), []byte("two")); err != nil {
				t.Fatal(err)
			}
			if err := b.Put(ctx, sc.RecordKey(2), []byte("two")); err != nil {
				t.Fatalf("idempotent Put: %v", err)
			}
			if err := b.Put(ctx, sc.RecordKey(2), []byte("TWO")); !errors.Is(err, ErrConflict) {
				t.Fatalf("Put of other content = %v, want ErrConflict", err)
			}
			if err := b.Put(ctx, sc.RecordKey(1), []byte("one")); err != nil {
				t.Fatal(err)
			}
			if err := b.Put(ctx, sc.CheckpointKey(2), []byte("cp")); err != nil {
				t.Fatal(err)
			}
			if got, err := b.Get(ctx, sc.RecordKey(2)); err != nil || string(got) != "two" {
				t.Fatalf("Get = %q, %v", got, err)
			}
			if _, err := b.Get(ctx, sc.RecordKey(3)); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get(missing) = %v", err)
			}
			var names []string
			if err := b.List(ctx, sc.Dir(), func(n string) error { names = append(names, n); return nil }); err != nil {
				t.Fatal(err)
			}
			if want := []string{SeqName(1), SeqName(2)}; !slices.Equal(names, want) {
				t.Fatalf("List = %v, want %v", names, want)
			}
			names = nil
			if err := b.List(ctx, sc.Dir()+"/checkpoints", func(n string) error { names = append(names, n); return nil }); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(names, []string{SeqName(2)}) {
				t.Fatalf("List(checkpoints) = %v", names)
			}

			if bp, ok := b.(BatchPutter); ok {
				objs := []Object{{Key: sc.RecordKey(3), Data: []byte("three")}, {Key: sc.RecordKey(4), Data: []byte("four")}}
				for range 2 { // idempotent
					for i, err := range bp.PutMany(ctx, objs) {
						if err != nil {
							t.Fatalf("PutMany %d: %v", i, err)
						}
					}
				}
				if got, err := b.Get(ctx, sc.RecordKey(4)); err != nil || string(got) != "four" {
					t.Fatalf("Get after PutMany = %q, %v", got, err)
				}
				if err := b.Put(ctx, sc.RecordKey(3), []byte("three")); err != nil {
					t.Fatalf("Put over PutMany: %v", err)
				}
			}

			signer := newSoftSigner(t)
			pub, _ := ParsePublicKey(signer.spki)
			log := Scope{Kind: shared.AuditKindTenant, ID: "vpc-bucket"}
			writeLog(t, b, signer, log, 5, 2, 5)
			rep, err := Verify(ctx, BucketSource{Bucket: b}, log, pub, Options{})
			if err != nil || rep.Last != 5 {
				t.Fatalf("Verify = %+v, %v", rep, err)
			}
		})
	}
}

// An object the previous build stored with its chunks out of order (nats.go
// resent a chunk refused with "no responders" after the next one was
// stored, during a stream leader's loss) reads back whole: the digest
// picks the order. A corrupted object still fails.
func TestObjectStoredOutOfOrderReadsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, _, js := natstest.Run(t)
	obs, err := NewObjectBucket(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 2*objChunkSize+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	put := func(key, nuid string, chunks [][]byte, digest string) {
		t.Helper()
		for _, c := range chunks {
			if _, err := js.Publish(ctx, chunkSubject(nuid), c); err != nil {
				t.Fatal(err)
			}
		}
		info := jetstream.ObjectInfo{
			ObjectMeta: jetstream.ObjectMeta{Name: key, Opts: &jetstream.ObjectMetaOptions{ChunkSize: objChunkSize}},
			Bucket:     ObjectBucket, NUID: nuid, Size: uint64(len(data)), Chunks: uint32(len(chunks)), Digest: digest,
		}
		meta, _ := json.Marshal(info)
		if _, err := js.Publish(ctx, metaSubject(key), meta); err != nil {
			t.Fatal(err)
		}
	}
	a, b, c := data[:objChunkSize], data[objChunkSize:2*objChunkSize], data[2*objChunkSize:]
	put("xks/x/tile/entries/000", "nuid-reordered", [][]byte{a, c, b}, digestOf(data))
	got, err := obs.Get(ctx, "xks/x/tile/entries/000")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("out-of-order object: %d bytes, %v", len(got), err)
	}
	bad := slices.Clone(b)
	bad[0] ^= 1
	put("xks/x/tile/entries/001", "nuid-corrupt", [][]byte{a, bad, c}, digestOf(data))
	if _, err := obs.Get(ctx, "xks/x/tile/entries/001"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt object: %v, want ErrCorrupt", err)
	}
}
