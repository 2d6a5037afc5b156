package auditlog

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/sovkeys/sovkeys/shared"
)

const testDeployment = "sovkeys.test"

var testScope = Scope{Kind: shared.AuditKindTenant, ID: "vpc-1"}

// tlogFixture writes a scope's log to a bucket as the exporter does:
// append records, flush tiles, sign the checkpoint.
type tlogFixture struct {
	t      *testing.T
	bucket *memBucket
	key    *ecdsa.PrivateKey
	b      Builder
	prev   Hash
	cps    map[int64][]byte
	wits   []*Cosigner
}

func newTlogFixture(t *testing.T) *tlogFixture {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &tlogFixture{t: t, bucket: newMemBucket(), key: key, cps: map[int64][]byte{}}
}

func (f *tlogFixture) trust() Trust {
	return Trust{Deployment: testDeployment, LogKey: &f.key.PublicKey}
}

// grow appends n records and flushes + signs.
func (f *tlogFixture) grow(n int) []byte {
	f.t.Helper()
	for range n {
		seq := uint64(f.b.Size()) + 1
		r := FromEvent(testEvent(int(seq)), seq, f.prev)
		data, err := r.Encode()
		if err != nil {
			f.t.Fatal(err)
		}
		if err := f.b.Append(data); err != nil {
			f.t.Fatal(err)
		}
		f.prev = HashOf(data)
	}
	ctx := context.Background()
	for _, o := range f.b.Flush() {
		if err := f.bucket.Put(ctx, testScope.TlogPrefix()+o.Key, o.Data); err != nil {
			f.t.Fatal(err)
		}
	}
	cp := f.sign(f.b.Size())
	if err := f.bucket.Put(ctx, testScope.CheckpointHistoryKey(f.b.Size()), cp); err != nil {
		f.t.Fatal(err)
	}
	f.bucket.mu.Lock()
	f.bucket.objects[testScope.CheckpointPath()] = cp
	f.bucket.mu.Unlock()
	f.cps[f.b.Size()] = cp
	return cp
}

func (f *tlogFixture) sign(size int64) []byte {
	root, err := f.b.Root()
	if err != nil {
		f.t.Fatal(err)
	}
	return signTree(f.t, f.key, TreeHead{Origin: testScope.Origin(testDeployment), Size: size, Root: root}, f.wits...)
}

func signTree(t *testing.T, key *ecdsa.PrivateKey, th TreeHead, wits ...*Cosigner) []byte {
	t.Helper()
	text := th.Text()
	d := sha256.Sum256(text)
	sig, err := ecdsa.SignASN1(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewECDSAVerifier(KeyName(testDeployment), &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	signers := []note.Signer{&PresignedSigner{KeyName: v.Name(), Hash: v.KeyHash(), Text: text, Sig: sig}}
	for _, w := range wits {
		signers = append(signers, w)
	}
	out, err := note.Sign(&note.Note{Text: string(text)}, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// mth is RFC 6962's Merkle tree hash, computed naively.
func mth(leaves [][]byte) []byte {
	h := rfc6962.DefaultHasher
	switch len(leaves) {
	case 0:
		return h.EmptyRoot()
	case 1:
		return h.HashLeaf(leaves[0])
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	return h.HashChildren(mth(leaves[:k]), mth(leaves[k:]))
}

// TestTilesAgainstIndependentVerifier: the tree, its inclusion proofs and
// its consistency proofs are accepted by github.com/transparency-dev/merkle
// (not our code), for sizes around tile boundaries.
func TestAuditTilesAgainstIndependentVerifier(t *testing.T) {
	f := newTlogFixture(t)
	sizes := []int{1, 2, 3, 255, 256, 257, 511, 1000, 65536 + 300}
	roots := map[int64]tlog.Hash{}
	var leaves [][]byte
	ctx := context.Background()
	for _, n := range sizes {
		f.grow(n - int(f.b.Size()))
		root, _ := f.b.Root()
		roots[f.b.Size()] = root
	}
	for n := int64(1); n <= f.b.Size(); n++ {
		entries, err := readBundle(ctx, f.bucket, testScope.TlogPrefix(), (n-1)/TileWidth, int(min(f.b.Size()-(n-1)/TileWidth*TileWidth, TileWidth)))
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, entries[(n-1)%TileWidth])
	}
	for _, n := range sizes[:7] {
		if got, want := roots[int64(n)], mth(leaves[:n]); !bytes.Equal(got[:], want) {
			t.Fatalf("root of %d differs from RFC 6962", n)
		}
	}
	hasher := rfc6962.DefaultHasher
	for i, old := range sizes {
		for _, cur := range sizes[i:] {
			hr := tlog.TileHashReader(tlog.Tree{N: int64(cur), Hash: roots[int64(cur)]}, &bucketTiles{ctx: ctx, bucket: f.bucket, prefix: testScope.TlogPrefix()})
			p, err := tlog.ProveTree(int64(cur), int64(old), hr)
			if err != nil {
				t.Fatalf("prove %d -> %d: %v", old, cur, err)
			}
			var hs [][]byte
			for _, h := range p {
				hs = append(hs, h[:])
			}
			ro, rc := roots[int64(old)], roots[int64(cur)]
			if err := proof.VerifyConsistency(hasher, uint64(old), uint64(cur), hs, ro[:], rc[:]); err != nil {
				t.Fatalf("transparency-dev/merkle rejects consistency %d -> %d: %v", old, cur, err)
			}
		}
	}
	for _, seq := range []uint64{1, 2, 256, 257, 1000, 65536, 65536 + 300} {
		p, err := Prove(ctx, f.bucket, testScope, seq, nil)
		if err != nil {
			t.Fatal(err)
		}
		r := roots[f.b.Size()]
		if err := proof.VerifyInclusion(hasher, seq-1, uint64(f.b.Size()), hasher.HashLeaf(p.Record), p.Inclusion, r[:]); err != nil {
			t.Fatalf("transparency-dev/merkle rejects inclusion of %d: %v", seq, err)
		}
		if _, _, err := p.Verify(f.trust()); err != nil {
			t.Fatalf("proof of %d: %v", seq, err)
		}
	}
}

func TestAuditVerifyTlog(t *testing.T) {
	ctx := context.Background()
	f := newTlogFixture(t)
	for _, n := range []int{10, 300, 3} {
		f.grow(n)
	}
	rep, err := VerifyTlog(ctx, f.bucket, testScope, f.trust(), TlogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Size != 313 || rep.First != 1 || rep.Last != 313 || rep.History != 3 {
		t.Fatalf("report %+v", rep)
	}
	for _, r := range [][2]uint64{{1, 1}, {5, 260}, {257, 313}, {313, 313}} {
		if _, err := VerifyTlog(ctx, f.bucket, testScope, f.trust(), TlogOptions{From: r[0], To: r[1]}); err != nil {
			t.Fatalf("range %v: %v", r, err)
		}
	}
	// An older checkpoint a customer kept still verifies (a prefix).
	if rep, err := VerifyTlog(ctx, f.bucket, testScope, f.trust(), TlogOptions{Checkpoint: f.cps[10]}); err != nil || rep.Size != 10 {
		t.Fatalf("old checkpoint: %v", err)
	}
}

// TestVerifyTlogTampering: every alteration a bucket owner could make is
// refused, naming the record.
func TestAuditVerifyTlogTampering(t *testing.T) {
	ctx := context.Background()
	other, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, tc := range []struct {
		name    string
		tamper  func(f *tlogFixture)
		opts    TlogOptions
		wantSeq uint64
		want    string
	}{
		{"record altered in its bundle", func(f *tlogFixture) {
			f.editBundle(0, 256, func(es [][]byte) { es[41] = bytes.Replace(es[41], []byte("req-42"), []byte("req-43"), 1) })
		}, TlogOptions{}, 42, "not the one the signed tree holds"},
		{"record altered, range check", func(f *tlogFixture) {
			f.editBundle(0, 256, func(es [][]byte) { es[41] = bytes.Replace(es[41], []byte("req-42"), []byte("req-43"), 1) })
		}, TlogOptions{From: 40, To: 50}, 42, "not the one the signed tree holds"},
		{"record removed", func(f *tlogFixture) {
			f.editBundle(1, 44, func(es [][]byte) {})
			f.bucket.mu.Lock()
			b := f.bucket.objects[testScope.TlogPrefix()+BundlePath(1, 44)]
			es, _ := SplitBundle(b)
			var nb []byte
			for i, e := range es {
				if i != 10 {
					nb, _ = AppendBundle(nb, e)
				}
			}
			f.bucket.objects[testScope.TlogPrefix()+BundlePath(1, 44)] = nb
			f.bucket.mu.Unlock()
		}, TlogOptions{}, 257, "holds 43 entries"},
		{"bundle deleted", func(f *tlogFixture) {
			f.bucket.mu.Lock()
			delete(f.bucket.objects, testScope.TlogPrefix()+BundlePath(0, 256))
			f.bucket.mu.Unlock()
		}, TlogOptions{}, 1, "not found"},
		{"tail cut with the checkpoint replaced by an older one", func(f *tlogFixture) {
			f.bucket.mu.Lock()
			for k := range f.bucket.objects {
				if strings.Contains(k, "checkpoints-v2/") && !strings.HasSuffix(k, fmt.Sprintf("%020d", 10)) {
					delete(f.bucket.objects, k)
				}
			}
			f.bucket.objects[testScope.CheckpointPath()] = f.cps[10]
			delete(f.bucket.objects, testScope.TlogPrefix()+BundlePath(1, 44))
			f.bucket.mu.Unlock()
		}, TlogOptions{Checkpoint: nil}, 0, ""}, // verifies as a 10-record log: only a kept checkpoint tells
		{"checkpoint signed by another key", func(f *tlogFixture) {
			root, _ := f.b.Root()
			f.bucket.mu.Lock()
			f.bucket.objects[testScope.CheckpointPath()] = signTree(t, other, TreeHead{Origin: testScope.Origin(testDeployment), Size: f.b.Size(), Root: root})
			f.bucket.mu.Unlock()
		}, TlogOptions{}, 0, "signature"},
		{"checkpoint of another scope", func(f *tlogFixture) {
			root, _ := f.b.Root()
			f.bucket.mu.Lock()
			f.bucket.objects[testScope.CheckpointPath()] = signTree(t, f.key, TreeHead{Origin: Scope{Kind: "tenant", ID: "vpc-2"}.Origin(testDeployment), Size: f.b.Size(), Root: root})
			f.bucket.mu.Unlock()
		}, TlogOptions{}, 0, "origin"},
		{"history checkpoint forked", func(f *tlogFixture) {
			f.bucket.mu.Lock()
			f.bucket.objects[testScope.CheckpointHistoryKey(10)] = signTree(t, f.key, TreeHead{Origin: testScope.Origin(testDeployment), Size: 10, Root: tlog.Hash{1}})
			f.bucket.mu.Unlock()
		}, TlogOptions{}, 10, "not consistent"},
		{"record duplicated in its bundle", func(f *tlogFixture) {
			f.editBundle(1, 44, func(es [][]byte) { es[43] = es[42] })
		}, TlogOptions{}, 300, "not the one the signed tree holds"},
		{"record and its tile rewritten together", func(f *tlogFixture) {
			var leaf tlog.Hash
			f.editBundle(0, 256, func(es [][]byte) {
				es[41] = bytes.Replace(es[41], []byte("req-42"), []byte("req-43"), 1)
				leaf = tlog.RecordHash(es[41])
			})
			f.bucket.mu.Lock()
			key := testScope.TlogPrefix() + TilePath(0, 0, TileWidth)
			tile := append([]byte(nil), f.bucket.objects[key]...)
			copy(tile[41*tlog.HashSize:], leaf[:])
			f.bucket.objects[key] = tile
			f.bucket.mu.Unlock()
		}, TlogOptions{}, 1, "tiles do not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newTlogFixture(t)
			f.grow(10)
			f.grow(290)
			tc.tamper(f)
			rep, err := VerifyTlog(ctx, f.bucket, testScope, f.trust(), tc.opts)
			if tc.want == "" {
				if err != nil || rep.Size != 10 {
					t.Fatalf("got %v, %+v", err, rep)
				}
				// The customer's kept checkpoint of 300 exposes the cut.
				if _, err := VerifyTlog(ctx, f.bucket, testScope, f.trust(), TlogOptions{Checkpoint: f.cps[300]}); err == nil {
					t.Fatal("a cut log verified against the kept checkpoint")
				}
				return
			}
			var ve *VerifyError
			if !errors.As(err, &ve) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a VerifyError with %q", err, tc.want)
			}
			if tc.wantSeq != 0 && ve.Seq != tc.wantSeq {
				t.Fatalf("names %d, want %d: %v", ve.Seq, tc.wantSeq, err)
			}
		})
	}
}

// editBundle rewrites the entries of bundle n (width w) in the bucket.
func (f *tlogFixture) editBundle(n int64, w int, edit func([][]byte)) {
	f.bucket.mu.Lock()
	defer f.bucket.mu.Unlock()
	key := testScope.TlogPrefix() + BundlePath(n, w)
	es, err := SplitBundle(f.bucket.objects[key])
	if err != nil {
		f.t.Fatal(err)
	}
	edit(es)
	var nb []byte
	for _, e := range es {
		nb, _ = AppendBundle(nb, e)
	}
	f.bucket.objects[key] = nb
}

func TestAuditProofTampering(t *testing.T) {
	f := newTlogFixture(t)
	f.grow(20)
	p, err := Prove(context.Background(), f.bucket, testScope, 7, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Verify(f.trust()); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(p *Proof){
		"record":      func(p *Proof) { p.Record = bytes.Replace(p.Record, []byte("req-7"), []byte("req-8"), 1) },
		"seq":         func(p *Proof) { p.Seq = 8 },
		"hash":        func(p *Proof) { p.Inclusion[0][0] ^= 1 },
		"scope":       func(p *Proof) { p.Scope = "vpc-2" },
		"checkpoint":  func(p *Proof) { p.Checkpoint = strings.Replace(p.Checkpoint, "\n20\n", "\n21\n", 1) },
		"short proof": func(p *Proof) { p.Inclusion = p.Inclusion[1:] },
	} {
		q := *p
		q.Record = append([]byte(nil), p.Record...)
		q.Inclusion = nil
		for _, h := range p.Inclusion {
			q.Inclusion = append(q.Inclusion, append([]byte(nil), h...))
		}
		edit(&q)
		if _, _, err := q.Verify(f.trust()); err == nil {
			t.Errorf("a proof with an altered %s verified", name)
		}
	}
}

func TestAuditCosignatureQuorum(t *testing.T) {
	f := newTlogFixture(t)
	var wits []*Cosigner
	var vs []note.Verifier
	for i := range 3 {
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		w := NewCosigner(fmt.Sprintf("witness.test/w%d", i), k, time.Now)
		wits = append(wits, w)
		vs = append(vs, w.Verifier())
		v, err := ParseCosignerVKey(CosignerVKey(w.Name(), k.Public().(ed25519.PublicKey)))
		if err != nil || v.KeyHash() != w.KeyHash() {
			t.Fatalf("vkey round trip: %v", err)
		}
	}
	f.wits = wits[:2]
	cp := f.grow(5)
	tr := f.trust()
	tr.Witnesses, tr.Quorum = vs, 2
	if _, cos, err := tr.OpenCheckpoint(cp, testScope); err != nil || len(cos) != 2 {
		t.Fatalf("2 of 3: %v %v", cos, err)
	}
	tr.Quorum = 3
	if _, _, err := tr.OpenCheckpoint(cp, testScope); err == nil {
		t.Fatal("quorum of 3 met by 2 cosignatures")
	}
	// A newer checkpoint without cosignatures (witnesses down): a verifier
	// requiring them uses the newest one that has them.
	f.wits = nil
	f.grow(3)
	tr.Quorum = 2
	rep, err := VerifyTlog(context.Background(), f.bucket, testScope, tr, TlogOptions{})
	if err != nil || rep.Size != 5 || len(rep.Cosigners) != 2 {
		t.Fatalf("fallback to the cosigned checkpoint: %v %+v", err, rep)
	}
	tr.Quorum = 0
	if rep, err := VerifyTlog(context.Background(), f.bucket, testScope, tr, TlogOptions{}); err != nil || rep.Size != 8 {
		t.Fatalf("without quorum: %v %+v", err, rep)
	}
	// The same witness twice does not count twice.
	dup := append(cp, cp[bytes.LastIndex(cp[:len(cp)-1], []byte("\n"))+1:]...)
	tr.Quorum = 2
	tr.Witnesses = vs[1:]
	if _, _, err := tr.OpenCheckpoint(dup, testScope); err == nil {
		t.Fatal("one witness's cosignature counted twice")
	}
}

func TestAuditCheckAdvance(t *testing.T) {
	var b Builder
	roots := map[int64]tlog.Hash{}
	for i := range 20 {
		_ = b.Append([]byte{byte(i)})
		roots[b.Size()], _ = b.Root()
	}
	hr, err := b.HashReader(context.Background(), nil, testScope)
	if err != nil {
		t.Fatal(err)
	}
	pr := func(n, m int64) [][]byte {
		p, err := tlog.ProveTree(m, n, hr)
		if err != nil {
			t.Fatal(err)
		}
		var out [][]byte
		for _, h := range p {
			out = append(out, h[:])
		}
		return out
	}
	for _, tc := range []struct {
		name            string
		last, old, size int64
		lastRoot, root  tlog.Hash
		proof           [][]byte
		want            error
	}{
		{"first", 0, 0, 5, tlog.Hash{}, roots[5], nil, nil},
		{"extends", 5, 5, 20, roots[5], roots[20], pr(5, 20), nil},
		{"same", 20, 20, 20, roots[20], roots[20], nil, nil},
		{"same size other root", 20, 20, 20, roots[20], roots[19], nil, ErrInconsistent},
		{"stale old size", 20, 5, 20, roots[20], roots[20], pr(5, 20), ErrOldSize},
		{"wrong proof", 5, 5, 20, roots[5], roots[20], pr(6, 20), ErrInconsistent},
		{"other last root", 5, 5, 20, roots[6], roots[20], pr(5, 20), ErrInconsistent},
		{"shrink", 20, 20, 5, roots[20], roots[5], nil, ErrBadRequest},
		{"proof from zero", 0, 0, 5, tlog.Hash{}, roots[5], pr(5, 20), ErrBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckAdvance(tc.last, tc.lastRoot, tc.old, tc.proof, tc.size, tc.root)
			if !errors.Is(err, tc.want) && !(tc.want == nil && err == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}
