package auditlog

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

func TestVerify(t *testing.T) {
	t.Parallel()
	sc := Scope{Kind: shared.AuditKindTenant, ID: "vpc-1"}
	signer := newSoftSigner(t)
	pub, err := ParsePublicKey(PublicKeyPEM(signer.spki))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rewrite := func(b *memBucket, key string, edit func([]byte) []byte) {
		b.mu.Lock()
		b.objects[key] = edit(bytes.Clone(b.objects[key]))
		b.mu.Unlock()
	}
	remove := func(b *memBucket, key string) {
		b.mu.Lock()
		delete(b.objects, key)
		b.mu.Unlock()
	}
	// reencode parses record seq, edits it and stores it canonically again:
	// an edit only a hash chain can catch.
	reencode := func(b *memBucket, seq uint64, edit func(*Record)) {
		rewrite(b, sc.RecordKey(seq), func(data []byte) []byte {
			r, err := ParseRecord(data)
			if err != nil {
				t.Fatal(err)
			}
			edit(r)
			out, err := r.Encode()
			if err != nil {
				t.Fatal(err)
			}
			return out
		})
	}
	for _, tc := range []struct {
		name     string
		tamper   func(b *memBucket)
		opts     Options
		wantSeq  uint64
		wantCP   bool
		wantText string
	}{
		{name: "intact"},
		{name: "record missing", tamper: func(b *memBucket) { remove(b, sc.RecordKey(5)) }, wantSeq: 5, wantText: "missing"},
		{name: "first record missing", tamper: func(b *memBucket) { remove(b, sc.RecordKey(1)) }, wantSeq: 1, wantText: "missing"},
		{name: "last records missing", tamper: func(b *memBucket) { remove(b, sc.RecordKey(10)) }, wantSeq: 10, wantText: "missing"},
		{name: "content edited", tamper: func(b *memBucket) {
			reencode(b, 4, func(r *Record) { r.Result = shared.ResultDenied })
		}, wantSeq: 4, wantText: "altered"},
		{name: "link edited", tamper: func(b *memBucket) {
			reencode(b, 4, func(r *Record) { r.Prev = Genesis.String() })
		}, wantSeq: 4, wantText: "altered"},
		{name: "checkpointed record edited", tamper: func(b *memBucket) {
			reencode(b, 6, func(r *Record) { r.Caller.SourceIP = "192.0.2.1" })
		}, wantSeq: 6, wantText: "checkpoint"},
		{name: "last record edited", tamper: func(b *memBucket) {
			reencode(b, 10, func(r *Record) { r.Reason = "nothing happened" })
		}, wantSeq: 10, wantText: "altered"},
		{name: "bytes edited", tamper: func(b *memBucket) {
			rewrite(b, sc.RecordKey(3), func(d []byte) []byte { return bytes.Replace(d, []byte("success"), []byte("failure"), 1) })
		}, wantSeq: 3, wantText: "altered"},
		{name: "not canonical", tamper: func(b *memBucket) {
			rewrite(b, sc.RecordKey(2), func(d []byte) []byte { return append(d, ' ') })
		}, wantSeq: 2, wantText: "canonical"},
		{name: "swapped", tamper: func(b *memBucket) {
			b.mu.Lock()
			k2, k3 := sc.RecordKey(2), sc.RecordKey(3)
			b.objects[k2], b.objects[k3] = b.objects[k3], b.objects[k2]
			b.mu.Unlock()
		}, wantSeq: 2, wantText: "reordered"},
		{name: "unsigned tail", tamper: func(b *memBucket) { remove(b, sc.CheckpointKey(10)) }, wantSeq: 7, wantText: "not covered"},
		{name: "unsigned tail allowed", tamper: func(b *memBucket) { remove(b, sc.CheckpointKey(10)) }, opts: Options{AllowUnsignedTail: true}},
		{name: "checkpoint forged", tamper: func(b *memBucket) {
			rewrite(b, sc.CheckpointKey(6), func(d []byte) []byte {
				cp, _ := ParseCheckpoint(d)
				cp.Time = "2030-01-01T00:00:00Z"
				out, _ := cp.Encode()
				return out
			})
		}, wantSeq: 6, wantCP: true, wantText: "signature"},
		{name: "checkpoint by another key", tamper: func(b *memBucket) {
			other := newSoftSigner(t)
			h, _ := b.Get(ctx, sc.RecordKey(6))
			rewrite(b, sc.CheckpointKey(6), func([]byte) []byte { return other.checkpoint(t, sc, 6, HashOf(h)) })
		}, wantSeq: 6, wantCP: true, wantText: "signed by key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newMemBucket()
			writeLog(t, b, signer, sc, 10, 3, 6, 10)
			if tc.tamper != nil {
				tc.tamper(b)
			}
			rep, err := Verify(ctx, BucketSource{Bucket: b}, sc, pub, tc.opts)
			if tc.wantSeq == 0 {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if rep.First != 1 || rep.Last == 0 || rep.Records != 10 {
					t.Fatalf("report %+v", rep)
				}
				return
			}
			var ve *VerifyError
			if !errors.As(err, &ve) || !errors.Is(err, ErrVerify) {
				t.Fatalf("Verify = %v, want a VerifyError", err)
			}
			if ve.Seq != tc.wantSeq || ve.Checkpoint != tc.wantCP || !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("Verify = %v (seq %d, checkpoint %v); want seq %d checkpoint %v mentioning %q",
					err, ve.Seq, ve.Checkpoint, tc.wantSeq, tc.wantCP, tc.wantText)
			}
		})
	}
}

func TestVerifyEmptyLog(t *testing.T) {
	t.Parallel()
	signer := newSoftSigner(t)
	pub, _ := ParsePublicKey(signer.spki)
	_, err := Verify(context.Background(), BucketSource{Bucket: newMemBucket()}, Scope{Kind: "tenant", ID: "x"}, pub, Options{})
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Seq != 1 {
		t.Fatalf("Verify(empty) = %v", err)
	}
}
