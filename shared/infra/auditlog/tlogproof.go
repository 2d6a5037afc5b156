package auditlog

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// Proof shows that one record is in a scope's log: the record's canonical
// bytes, a signed checkpoint, and the RFC 6962 inclusion proof of leaf
// Seq-1 in that checkpoint's tree. Anyone with the audit public key (and
// the witness keys) can check it offline (Proof.Verify).
type Proof struct {
	Kind       string   `json:"kind"`
	Scope      string   `json:"scope"`
	Seq        uint64   `json:"seq"`
	Record     []byte   `json:"record"`     // canonical record (base64 in JSON)
	Checkpoint string   `json:"checkpoint"` // signed note
	Inclusion  [][]byte `json:"inclusion"`  // hashes, leaf to root
}

// ErrProof: an inclusion proof does not verify.
var ErrProof = errors.New("auditlog: inclusion proof invalid")

// Prove builds the proof of record seq of s against checkpoint (the
// bucket's newest when nil).
func Prove(ctx context.Context, bucket Bucket, s Scope, seq uint64, checkpoint []byte) (*Proof, error) {
	if checkpoint == nil {
		var err error
		if checkpoint, err = LatestCheckpoint(ctx, bucket, s); err != nil {
			return nil, err
		}
	}
	text, _, ok := cutNote(checkpoint)
	if !ok {
		return nil, fmt.Errorf("%w: checkpoint is not a signed note", ErrTlog)
	}
	th, err := ParseTreeHead(text)
	if err != nil {
		return nil, err
	}
	if seq == 0 || seq > uint64(th.Size) {
		return nil, fmt.Errorf("%w: record %d is not in the signed tree of %d records", ErrNotFound, seq, th.Size)
	}
	idx := int64(seq - 1)
	n := idx / TileWidth
	entries, err := readBundle(ctx, bucket, s.TlogPrefix(), n, int(min(th.Size-n*TileWidth, TileWidth)))
	if err != nil {
		return nil, err
	}
	hr := tlog.TileHashReader(tlog.Tree{N: th.Size, Hash: th.Root}, &bucketTiles{ctx: ctx, bucket: bucket, prefix: s.TlogPrefix()})
	rp, err := tlog.ProveRecord(th.Size, idx, hr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTlog, err)
	}
	p := &Proof{Kind: s.Kind, Scope: s.ID, Seq: seq, Record: entries[idx%TileWidth], Checkpoint: string(checkpoint)}
	for _, h := range rp {
		p.Inclusion = append(p.Inclusion, append([]byte(nil), h[:]...))
	}
	return p, nil
}

// Verify checks the proof: the checkpoint's signatures under tr, the
// record's inclusion at Seq, and that it is a canonical record of the
// proof's scope numbered Seq.
func (p *Proof) Verify(tr Trust) (*Record, TreeHead, error) {
	s := Scope{Kind: p.Kind, ID: p.Scope}
	th, _, err := tr.OpenCheckpoint([]byte(p.Checkpoint), s)
	if err != nil {
		return nil, TreeHead{}, err
	}
	if p.Seq == 0 || p.Seq > uint64(th.Size) {
		return nil, th, fmt.Errorf("%w: record %d is outside the tree of %d", ErrProof, p.Seq, th.Size)
	}
	rp := make(tlog.RecordProof, len(p.Inclusion))
	for i, h := range p.Inclusion {
		if len(h) != tlog.HashSize {
			return nil, th, fmt.Errorf("%w: hash of %d bytes", ErrProof, len(h))
		}
		copy(rp[i][:], h)
	}
	if err := tlog.CheckRecord(rp, th.Size, th.Root, int64(p.Seq-1), tlog.RecordHash(p.Record)); err != nil {
		return nil, th, fmt.Errorf("%w: %v", ErrProof, err)
	}
	r, err := ParseRecord(p.Record)
	if err != nil {
		return nil, th, err
	}
	if r.Seq != p.Seq || r.Kind != s.Kind || r.Scope != s.ID {
		return nil, th, fmt.Errorf("%w: the record is %s:%s %d", ErrProof, r.Kind, r.Scope, r.Seq)
	}
	return r, th, nil
}

// cutNote splits a signed note into its text (with final newline) and
// signature block.
func cutNote(signed []byte) (text, sigs []byte, ok bool) {
	for i := 0; i+1 < len(signed); i++ {
		if signed[i] == '\n' && signed[i+1] == '\n' {
			return signed[:i+1], signed[i+2:], true
		}
	}
	return nil, nil, false
}
