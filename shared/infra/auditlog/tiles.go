package auditlog

import (
	"context"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// Builder grows one scope's Merkle tree and produces its tiles. It holds
// only the right edge: the hashes of the incomplete tile at each level and
// the entries of the incomplete bundle (at most 255 of each), so memory is
// O(log n) whatever the log's size. Full tiles and bundles are handed out
// once, when they complete; partial ones at every Flush.
type Builder struct {
	size    int64
	rows    [][]tlog.Hash // rows[L]: hashes of the incomplete level-L tile
	entries [][]byte      // entries of the incomplete bundle
	last    []byte        // the newest entry (nil: none, or not loaded)
	done    []Object      // full tiles and bundles completed since the last Flush
}

// Last returns the newest entry (the record Size()), nil for an empty
// tree: the record the next one's prev must name.
func (b *Builder) Last() []byte { return b.last }

// Size is the number of leaves.
func (b *Builder) Size() int64 { return b.size }

// Append adds one entry (a record's canonical bytes) as leaf Size().
func (b *Builder) Append(entry []byte) error {
	if len(entry) > MaxEntrySize {
		return fmt.Errorf("%w: entry of %d bytes exceeds %d", ErrTlog, len(entry), MaxEntrySize)
	}
	b.entries = append(b.entries, entry)
	b.last = entry
	if len(b.entries) == TileWidth {
		b.done = append(b.done, Object{Key: BundlePath(b.size>>TileHeight, TileWidth), Data: bundleOf(b.entries)})
		b.entries = nil
	}
	b.size++
	h := tlog.RecordHash(entry)
	for level := 0; ; level++ {
		if len(b.rows) == level {
			b.rows = append(b.rows, nil)
		}
		b.rows[level] = append(b.rows[level], h)
		if len(b.rows[level]) < TileWidth {
			return nil
		}
		n := (b.size >> (TileHeight * level)) >> TileHeight
		b.done = append(b.done, Object{Key: TilePath(level, n-1, TileWidth), Data: hashBytes(b.rows[level])})
		h = subtreeHash(b.rows[level])
		b.rows[level] = nil
	}
}

// Flush returns the objects to write for the tree at Size(): the full tiles
// and bundles completed since the last Flush, then the partial ones.
// Keys are relative to the scope's prefix.
func (b *Builder) Flush() []Object {
	out := b.done
	b.done = nil
	if w := len(b.entries); w > 0 {
		out = append(out, Object{Key: BundlePath(b.size>>TileHeight, w), Data: bundleOf(b.entries)})
	}
	for level, row := range b.rows {
		if len(row) == 0 {
			continue
		}
		n := (b.size >> (TileHeight * level)) >> TileHeight
		out = append(out, Object{Key: TilePath(level, n, len(row)), Data: hashBytes(row)})
	}
	return out
}

// Root is the tree hash at Size().
func (b *Builder) Root() (tlog.Hash, error) {
	if b.size == 0 {
		return tlog.Hash{}, fmt.Errorf("%w: empty tree", ErrTlog)
	}
	return tlog.TreeHash(b.size, tlog.HashReaderFunc(b.readEdge))
}

// edgeTile returns the incomplete tile t from memory, if t is one.
func (b *Builder) edgeTile(t tlog.Tile) ([]byte, bool) {
	if t.L < 0 || t.L >= len(b.rows) {
		return nil, false
	}
	row := b.rows[t.L]
	n := (b.size >> (TileHeight * t.L)) >> TileHeight
	if t.N != n || t.W > len(row) {
		return nil, false
	}
	return hashBytes(row[:t.W]), true
}

// readEdge answers the stored hashes tlog.TreeHash asks for at Size():
// the complete subtrees along the right edge, each inside the incomplete
// tile of its level.
func (b *Builder) readEdge(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, idx := range indexes {
		level, n := tlog.SplitStoredHashIndex(idx)
		tl, sub := level/TileHeight, level%TileHeight
		if tl >= len(b.rows) {
			return nil, fmt.Errorf("%w: hash %d/%d is not on the edge", ErrTlog, level, n)
		}
		row := b.rows[tl]
		count := b.size >> (TileHeight * tl)
		base := count >> TileHeight << TileHeight
		lo, hi := n<<sub, (n+1)<<sub
		if lo < base || hi > count {
			return nil, fmt.Errorf("%w: hash %d/%d is not on the edge", ErrTlog, level, n)
		}
		out[i] = subtreeHash(row[lo-base : hi-base])
	}
	return out, nil
}

// LoadBuilder rebuilds the edge of a scope's tree of the given size and
// root from the tiles and bundles in a bucket, checking them against root.
func LoadBuilder(ctx context.Context, bucket Bucket, s Scope, size int64, root tlog.Hash) (*Builder, error) {
	b := &Builder{size: size}
	if size == 0 {
		return b, nil
	}
	tr := &bucketTiles{ctx: ctx, bucket: bucket, prefix: s.TlogPrefix()}
	for level := 0; size>>(TileHeight*level) > 0; level++ {
		count := size >> (TileHeight * level)
		w := int(count % TileWidth)
		b.rows = append(b.rows, nil)
		if w == 0 {
			continue
		}
		data, err := tr.readTile(tlog.Tile{H: TileHeight, L: level, N: count >> TileHeight, W: w})
		if err != nil {
			return nil, err
		}
		for j := 0; j < w; j++ {
			var h tlog.Hash
			copy(h[:], data[j*tlog.HashSize:])
			b.rows[level] = append(b.rows[level], h)
		}
	}
	if w := int(size % TileWidth); w > 0 {
		entries, err := readBundle(ctx, bucket, s.TlogPrefix(), size>>TileHeight, w)
		if err != nil {
			return nil, err
		}
		for j, e := range entries {
			if tlog.RecordHash(e) != b.rows[0][j] {
				return nil, fmt.Errorf("%w: %s: entry %d does not match its tile", ErrTlog, s, size>>TileHeight<<TileHeight+int64(j))
			}
		}
		b.entries = entries
		b.last = entries[w-1]
	} else {
		// A full bundle ends the tree: its last entry, checked against the
		// full level-0 tile.
		n := size>>TileHeight - 1
		entries, err := readBundle(ctx, bucket, s.TlogPrefix(), n, TileWidth)
		if err != nil {
			return nil, err
		}
		tile, err := tr.readTile(tlog.Tile{H: TileHeight, L: 0, N: n, W: TileWidth})
		if err != nil {
			return nil, err
		}
		var h tlog.Hash
		copy(h[:], tile[(TileWidth-1)*tlog.HashSize:])
		if tlog.RecordHash(entries[TileWidth-1]) != h {
			return nil, fmt.Errorf("%w: %s: entry %d does not match its tile", ErrTlog, s, size-1)
		}
		b.last = entries[TileWidth-1]
	}
	got, err := b.Root()
	if err != nil {
		return nil, err
	}
	if got != root {
		return nil, fmt.Errorf("%w: %s: the tiles of size %d do not hash to the signed root", ErrTlog, s, size)
	}
	return b, nil
}

// HashReader returns a reader of the tree's stored hashes at Size(): the
// edge from memory, everything to its left from the full tiles in bucket
// (checked against the tree by tlog.TileHashReader). Proofs use it.
func (b *Builder) HashReader(ctx context.Context, bucket Bucket, s Scope) (tlog.HashReader, error) {
	root, err := b.Root()
	if err != nil {
		return nil, err
	}
	local := map[string][]byte{}
	for _, o := range b.done {
		local[o.Key] = o.Data
	}
	tr := &bucketTiles{ctx: ctx, bucket: bucket, prefix: s.TlogPrefix(), local: func(t tlog.Tile) ([]byte, bool) {
		if d, ok := b.edgeTile(t); ok {
			return d, true
		}
		if d, ok := local[TilePath(t.L, t.N, TileWidth)]; ok {
			return d[:t.W*tlog.HashSize], true
		}
		return nil, false
	}}
	return tlog.TileHashReader(tlog.Tree{N: b.size, Hash: root}, tr), nil
}

func bundleOf(entries [][]byte) []byte {
	n := 0
	for _, e := range entries {
		n += 2 + len(e)
	}
	out := make([]byte, 0, n)
	for _, e := range entries {
		out, _ = AppendBundle(out, e) // sizes checked in Append
	}
	return out
}

func hashBytes(row []tlog.Hash) []byte {
	out := make([]byte, 0, len(row)*tlog.HashSize)
	for _, h := range row {
		out = append(out, h[:]...)
	}
	return out
}

// subtreeHash is the hash of a complete subtree given its 2^k leaves' (or
// lower nodes') hashes.
func subtreeHash(hs []tlog.Hash) tlog.Hash {
	cur := append([]tlog.Hash(nil), hs...)
	for len(cur) > 1 {
		next := cur[:len(cur)/2]
		for i := range next {
			next[i] = tlog.NodeHash(cur[2*i], cur[2*i+1])
		}
		cur = next
	}
	return cur[0]
}
