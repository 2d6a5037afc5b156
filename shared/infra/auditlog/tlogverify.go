package auditlog

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"golang.org/x/mod/sumdb/tlog"
)

// LatestCheckpoint returns the scope's newest signed checkpoint in bucket:
// the "checkpoint" object, or the newest of the history (write-once
// buckets), whichever is larger.
func LatestCheckpoint(ctx context.Context, bucket Bucket, s Scope) ([]byte, error) {
	var best []byte
	var bestSize int64 = -1
	consider := func(data []byte) {
		text, _, ok := cutNote(data)
		if !ok {
			return
		}
		th, err := ParseTreeHead(text)
		if err == nil && th.Size > bestSize {
			best, bestSize = data, th.Size
		}
	}
	data, err := bucket.Get(ctx, s.CheckpointPath())
	switch {
	case err == nil:
		consider(data)
	case !errors.Is(err, ErrNotFound):
		return nil, err
	}
	var last string
	if err := bucket.List(ctx, s.CheckpointHistoryDir(), func(name string) error { last = name; return nil }); err != nil {
		return nil, err
	}
	if last != "" {
		data, err := bucket.Get(ctx, s.CheckpointHistoryDir()+"/"+last)
		if err != nil {
			return nil, err
		}
		consider(data)
	}
	if best == nil {
		return nil, fmt.Errorf("%w: %s has no transparency log checkpoint", ErrNotFound, s)
	}
	return best, nil
}

// TlogOptions select what VerifyTlog checks.
type TlogOptions struct {
	// From and To bound the records checked (1-based, inclusive); zero
	// means the whole log. A range is checked against the signed tree
	// through the tiles (inclusion), the whole log by rebuilding it.
	From, To uint64
	// Checkpoint, when set, is verified instead of the bucket's newest
	// (e.g. one the customer kept, to detect a log cut short).
	Checkpoint []byte
}

// TlogReport is what VerifyTlog proved.
type TlogReport struct {
	Kind      string   `json:"kind"`
	ID        string   `json:"scope"`
	Source    string   `json:"source"`
	Origin    string   `json:"origin"`
	Size      int64    `json:"size"` // records in the signed tree
	Root      string   `json:"root"` // base64, as in the checkpoint
	First     uint64   `json:"first"`
	Last      uint64   `json:"last"`
	Cosigners []string `json:"cosigners,omitempty"`
	// History is the number of earlier checkpoints found consistent with
	// this tree (whole-log verification only).
	History int `json:"history"`
	// V1Checkpoints is the number of version-1 (hash chain) checkpoints
	// whose head matched the record in the tree; V1Cutover is the newest.
	V1Checkpoints int    `json:"v1_checkpoints"`
	V1Cutover     uint64 `json:"v1_cutover,omitempty"`
}

// VerifyTlog verifies a scope's transparency log in bucket with only the
// trusted keys: the checkpoint's signatures (and witness quorum), then the
// records — canonical, of this scope, numbered from 1 without gaps, each
// linking to the hash of the one before — against the signed root. A
// whole-log check also checks every earlier checkpoint in the history and
// every version-1 checkpoint against the same tree. The first failure is
// a *VerifyError naming the sequence number.
func VerifyTlog(ctx context.Context, bucket Bucket, s Scope, tr Trust, opts TlogOptions) (*TlogReport, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	fail := func(seq uint64, cp bool, format string, args ...any) error {
		return &VerifyError{Scope: s, Seq: seq, Checkpoint: cp, Problem: fmt.Sprintf(format, args...)}
	}
	signed := opts.Checkpoint
	if signed == nil {
		var err error
		if signed, err = LatestCheckpoint(ctx, bucket, s); err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil, fail(1, false, "missing: the log has no signed checkpoint")
			}
			return nil, err
		}
	}
	th, cosigners, err := tr.OpenCheckpoint(signed, s)
	if errors.Is(err, errQuorum) && opts.Checkpoint == nil {
		// The newest checkpoint may not have its cosignatures yet (a
		// witness was down): use the newest one that has them.
		signed, th, cosigners, err = newestWithQuorum(ctx, bucket, s, tr)
	}
	if err != nil {
		return nil, fail(0, true, "%v", err)
	}
	if th.Size == 0 {
		return nil, fail(1, false, "missing: the signed tree is empty")
	}
	rep := &TlogReport{Kind: s.Kind, ID: s.ID, Source: bucket.String(), Origin: th.Origin, Size: th.Size,
		Root: base64.StdEncoding.EncodeToString(th.Root[:]), Cosigners: cosigners}
	from, to := max(opts.From, 1), opts.To
	if to == 0 {
		to = uint64(th.Size)
	}
	if from > to || to > uint64(th.Size) {
		return nil, fail(to, false, "outside the signed tree of %d records", th.Size)
	}
	rep.First, rep.Last = from, to
	v1, err := v1Heads(ctx, bucket, s, tr)
	if err != nil {
		return nil, err
	}
	w := &chainWalker{scope: s, tr: tr, fail: fail, v1: v1, rep: rep}
	if from == 1 && to == uint64(th.Size) {
		return rep, w.whole(ctx, bucket, th)
	}
	return rep, w.rangeOf(ctx, bucket, th, from, to)
}

// v1Heads reads the scope's version-1 checkpoints (hash chain heads),
// checking their signatures: each must match the record it names.
func v1Heads(ctx context.Context, bucket Bucket, s Scope, tr Trust) (map[uint64]string, error) {
	heads := map[uint64]string{}
	err := BucketSource{Bucket: bucket}.Checkpoints(ctx, s, func(claimed uint64, data []byte, rerr error) error {
		if rerr != nil {
			return &VerifyError{Scope: s, Seq: claimed, Checkpoint: true, Problem: fmt.Sprintf("version-1 checkpoint unreadable: %v", rerr)}
		}
		c, err := ParseCheckpoint(data)
		if err == nil && (c.Seq != claimed || c.ScopeOf() != s) {
			err = fmt.Errorf("names record %d of %s", c.Seq, c.ScopeOf())
		}
		if err == nil {
			err = c.Verify(tr.LogKey)
		}
		if err != nil {
			return &VerifyError{Scope: s, Seq: claimed, Checkpoint: true, Problem: fmt.Sprintf("version-1 checkpoint: %v", err)}
		}
		heads[c.Seq] = c.Head
		return nil
	})
	return heads, err
}

// chainWalker checks records in order.
type chainWalker struct {
	scope Scope
	tr    Trust
	fail  func(seq uint64, cp bool, format string, args ...any) error
	v1    map[uint64]string
	rep   *TlogReport
	prev  *Hash // hash of the record before the next one, when known
}

func (w *chainWalker) record(seq uint64, entry []byte) error {
	r, err := ParseRecord(entry)
	if err != nil {
		return w.fail(seq, false, "altered: %v", err)
	}
	if r.Kind != w.scope.Kind || r.Scope != w.scope.ID {
		return w.fail(seq, false, "altered: belongs to log %s:%s", r.Kind, r.Scope)
	}
	if r.Seq != seq {
		return w.fail(seq, false, "altered: holds record %d (reordered or replaced)", r.Seq)
	}
	if w.prev != nil && r.Prev != w.prev.String() {
		return w.fail(seq, false, "altered: does not link to record %d", seq-1)
	}
	h := HashOf(entry)
	if head, ok := w.v1[seq]; ok {
		if head != h.String() {
			return w.fail(seq, true, "version-1 checkpoint does not match the record in the tree")
		}
		w.rep.V1Checkpoints++
		w.rep.V1Cutover = max(w.rep.V1Cutover, seq)
	}
	w.prev = &h
	return nil
}

// whole checks every record against the signed tree through the tiles
// (which names an altered record exactly), rebuilds the tree from the
// entry bundles, and checks every earlier checkpoint against it.
func (w *chainWalker) whole(ctx context.Context, bucket Bucket, th TreeHead) error {
	history, err := w.history(ctx, bucket, th)
	if err != nil {
		return err
	}
	hr := tlog.TileHashReader(tlog.Tree{N: th.Size, Hash: th.Root}, &bucketTiles{ctx: ctx, bucket: bucket, prefix: w.scope.TlogPrefix()})
	g := Genesis
	w.prev = &g
	var b Builder
	for n := int64(0); n*TileWidth < th.Size; n++ {
		width := int(min(th.Size-n*TileWidth, TileWidth))
		first := uint64(n*TileWidth) + 1
		entries, err := readBundle(ctx, bucket, w.scope.TlogPrefix(), n, width)
		if err != nil {
			return w.fail(first, false, "entry bundle %s: %v", BundlePath(n, width), err)
		}
		idx := make([]int64, width)
		for j := range idx {
			idx[j] = tlog.StoredHashIndex(0, n*TileWidth+int64(j))
		}
		leaves, err := hr.ReadHashes(idx)
		if err != nil {
			return w.fail(first, false, "tiles do not match the signed tree: %v", err)
		}
		for j, e := range entries {
			seq := first + uint64(j)
			if tlog.RecordHash(e) != leaves[j] {
				return w.fail(seq, false, "altered: the record is not the one the signed tree holds")
			}
			if err := w.record(seq, e); err != nil {
				return err
			}
			if err := b.Append(e); err != nil {
				return w.fail(seq, false, "%v", err)
			}
			if want, ok := history[b.Size()]; ok {
				if got, _ := b.Root(); got != want {
					return w.fail(seq, true, "the signed checkpoint of size %d is not consistent with this tree", b.Size())
				}
				w.rep.History++
			}
		}
	}
	root, err := b.Root()
	if err != nil {
		return err
	}
	if root != th.Root {
		return w.fail(uint64(th.Size), true, "the records do not hash to the signed root (a record was altered, added or removed)")
	}
	return nil
}

// history returns the roots of the earlier signed checkpoints by size.
func (w *chainWalker) history(ctx context.Context, bucket Bucket, th TreeHead) (map[int64]tlog.Hash, error) {
	var names []string
	if err := bucket.List(ctx, w.scope.CheckpointHistoryDir(), func(n string) error { names = append(names, n); return nil }); err != nil {
		return nil, err
	}
	slices.Sort(names)
	roots := map[int64]tlog.Hash{}
	for _, name := range names {
		size, err := strconv.ParseInt(name, 10, 64)
		if err != nil || size <= 0 || size > th.Size {
			continue
		}
		data, err := bucket.Get(ctx, w.scope.CheckpointHistoryDir()+"/"+name)
		if err != nil {
			return nil, w.fail(uint64(size), true, "checkpoint history: %v", err)
		}
		logOnly := w.tr
		logOnly.Quorum = 0 // earlier checkpoints need only the log's signature
		h, _, err := logOnly.OpenCheckpoint(data, w.scope)
		if err != nil {
			return nil, w.fail(uint64(size), true, "checkpoint history: %v", err)
		}
		if h.Size != size {
			return nil, w.fail(uint64(size), true, "checkpoint history: object %s holds size %d", name, h.Size)
		}
		roots[size] = h.Root
	}
	return roots, nil
}

// rangeOf checks records from..to against the signed tree through the
// tiles: each record's leaf hash must be the one the verified tiles hold.
func (w *chainWalker) rangeOf(ctx context.Context, bucket Bucket, th TreeHead, from, to uint64) error {
	hr := tlog.TileHashReader(tlog.Tree{N: th.Size, Hash: th.Root}, &bucketTiles{ctx: ctx, bucket: bucket, prefix: w.scope.TlogPrefix()})
	start := from
	if from > 1 {
		start = from - 1 // the record before anchors the first link
	}
	for seq := start; seq <= to; {
		n := int64(seq-1) / TileWidth
		width := int(min(th.Size-n*TileWidth, TileWidth))
		entries, err := readBundle(ctx, bucket, w.scope.TlogPrefix(), n, width)
		if err != nil {
			return w.fail(seq, false, "entry bundle %s: %v", BundlePath(n, width), err)
		}
		var idx []int64
		var list []uint64
		for ; seq <= to && int64(seq-1)/TileWidth == n; seq++ {
			idx = append(idx, tlog.StoredHashIndex(0, int64(seq-1)))
			list = append(list, seq)
		}
		hashes, err := hr.ReadHashes(idx)
		if err != nil {
			return w.fail(list[0], false, "tiles do not match the signed tree: %v", err)
		}
		for i, sq := range list {
			e := entries[int64(sq-1)%TileWidth]
			if tlog.RecordHash(e) != hashes[i] {
				return w.fail(sq, false, "altered: the record is not the one the signed tree holds")
			}
			if sq == start && start < from {
				h := HashOf(e)
				w.prev = &h
				continue
			}
			if sq == 1 {
				g := Genesis
				w.prev = &g
			}
			if err := w.record(sq, e); err != nil {
				return err
			}
		}
	}
	return nil
}

// newestWithQuorum returns the newest checkpoint in the history that
// carries the cosignatures tr requires.
func newestWithQuorum(ctx context.Context, bucket Bucket, s Scope, tr Trust) ([]byte, TreeHead, []string, error) {
	var names []string
	if err := bucket.List(ctx, s.CheckpointHistoryDir(), func(n string) error { names = append(names, n); return nil }); err != nil {
		return nil, TreeHead{}, nil, err
	}
	slices.Sort(names)
	lastErr := fmt.Errorf("%w: no checkpoint has the %d witness cosignatures required", ErrSignature, tr.Quorum)
	for i := len(names) - 1; i >= 0 && i >= len(names)-1000; i-- {
		data, err := bucket.Get(ctx, s.CheckpointHistoryDir()+"/"+names[i])
		if err != nil {
			return nil, TreeHead{}, nil, err
		}
		th, cos, err := tr.OpenCheckpoint(data, s)
		if err == nil {
			return data, th, cos, nil
		}
		if !errors.Is(err, errQuorum) {
			return nil, TreeHead{}, nil, err
		}
	}
	return nil, TreeHead{}, nil, lastErr
}
