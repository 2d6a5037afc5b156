package auditlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/tlog"
)

// The transparency log (version 2 of the export): one Merkle tree per scope
// in the C2SP tlog-tiles layout (https://c2sp.org/tlog-tiles), under the
// scope's directory in an export bucket:
//
//	<kind>/<token>/tile/<L>/<N>[.p/<W>]      hash tiles (height 8)
//	<kind>/<token>/tile/entries/<N>[.p/<W>]  entry bundles: the canonical records
//	<kind>/<token>/checkpoint                newest signed checkpoint (buckets that can replace)
//	<kind>/<token>/checkpoints-v2/<size>     every signed checkpoint, write-once
//
// Leaf i of a scope's tree is record i+1 (its canonical RFC 8785 bytes,
// the same bytes version 1 exported one object each); leaf hashes and inner
// nodes are RFC 6962 (golang.org/x/mod/sumdb/tlog). Records still carry
// "prev", so the hash chain of version 1 continues inside the tree.

// TileHeight is the C2SP tile height: 256 hashes or entries per full tile.
const TileHeight = 8

// TileWidth is the number of hashes (or entries) in a full tile.
const TileWidth = 1 << TileHeight

// MaxEntrySize is the largest entry a bundle can hold (uint16 length prefix).
const MaxEntrySize = 1<<16 - 1

// ErrTlog: a tile, bundle or checkpoint of the transparency log is malformed
// or does not match the tree.
var ErrTlog = errors.New("auditlog: transparency log invalid")

// tileIndexPath encodes a tile index as C2SP does: 3-digit groups, all but
// the last prefixed with "x" (1234067 -> x001/x234/067).
func tileIndexPath(n int64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n >= 1000 {
		n /= 1000
		s = fmt.Sprintf("x%03d/%s", n%1000, s)
	}
	return s
}

// TilePath is the path of hash tile (level, n) of width w (TileWidth: full),
// relative to the log's prefix.
func TilePath(level int, n int64, w int) string {
	p := "tile/" + strconv.Itoa(level) + "/" + tileIndexPath(n)
	if w != TileWidth {
		p += ".p/" + strconv.Itoa(w)
	}
	return p
}

// BundlePath is the path of entry bundle n of width w.
func BundlePath(n int64, w int) string {
	p := "tile/entries/" + tileIndexPath(n)
	if w != TileWidth {
		p += ".p/" + strconv.Itoa(w)
	}
	return p
}

// TlogPrefix is the scope's log prefix in a bucket: "<kind>/<token>/".
func (s Scope) TlogPrefix() string { return s.Dir() + "/" }

// CheckpointPath is the scope's newest checkpoint (C2SP "checkpoint").
func (s Scope) CheckpointPath() string { return s.TlogPrefix() + "checkpoint" }

// CheckpointHistoryDir holds every signed checkpoint, named by tree size.
func (s Scope) CheckpointHistoryDir() string { return s.TlogPrefix() + "checkpoints-v2" }

// CheckpointHistoryKey is the write-once key of the checkpoint of size n.
func (s Scope) CheckpointHistoryKey(n int64) string {
	return s.CheckpointHistoryDir() + "/" + fmt.Sprintf("%020d", n)
}

// Origin is the checkpoint origin line of a scope: "<deployment>/audit/<kind>/<token>".
func (s Scope) Origin(deployment string) string {
	return deployment + "/audit/" + s.Kind + "/" + s.Token()
}

// ScopeOfOrigin reverses Origin.
func ScopeOfOrigin(origin string) (deployment string, s Scope, err error) {
	i := strings.LastIndex(origin, "/audit/")
	if i <= 0 {
		return "", Scope{}, fmt.Errorf("%w: origin %q", ErrScope, origin)
	}
	kind, tok, ok := strings.Cut(origin[i+len("/audit/"):], "/")
	if !ok || strings.Contains(tok, "/") {
		return "", Scope{}, fmt.Errorf("%w: origin %q", ErrScope, origin)
	}
	s, _, err = ScopeOfSubject(SubjectRecordPrefix + kind + "." + tok)
	if err != nil || !ValidDeployment(origin[:i]) {
		return "", Scope{}, fmt.Errorf("%w: origin %q", ErrScope, origin)
	}
	return origin[:i], s, nil
}

// ValidDeployment: 1-128 characters of [a-zA-Z0-9.-_/], no "//", not
// starting or ending with "/" (a schema-less URL such as "sovkeys.example").
func ValidDeployment(d string) bool {
	if d == "" || len(d) > 128 || strings.HasPrefix(d, "/") || strings.HasSuffix(d, "/") || strings.Contains(d, "//") {
		return false
	}
	for _, c := range d {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-_/", c)
		if !ok {
			return false
		}
	}
	return true
}

// KeyName is the note key name of a deployment's HSM audit key.
func KeyName(deployment string) string { return deployment + "/audit" }

// AppendBundle appends entry to a bundle (uint16 big-endian length, bytes).
func AppendBundle(bundle, entry []byte) ([]byte, error) {
	if len(entry) > MaxEntrySize {
		return nil, fmt.Errorf("%w: entry of %d bytes exceeds %d", ErrTlog, len(entry), MaxEntrySize)
	}
	bundle = binary.BigEndian.AppendUint16(bundle, uint16(len(entry)))
	return append(bundle, entry...), nil
}

// SplitBundle returns the entries of a bundle.
func SplitBundle(data []byte) ([][]byte, error) {
	var out [][]byte
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, fmt.Errorf("%w: truncated entry bundle", ErrTlog)
		}
		n := int(binary.BigEndian.Uint16(data))
		if len(data) < 2+n {
			return nil, fmt.Errorf("%w: truncated entry bundle", ErrTlog)
		}
		out = append(out, data[2:2+n])
		data = data[2+n:]
	}
	return out, nil
}

// bucketTiles reads a scope's hash tiles from a bucket for tlog's
// TileHashReader (which checks every tile against the tree it is given).
type bucketTiles struct {
	ctx    context.Context
	bucket Bucket
	prefix string
	// local answers tiles the caller holds in memory (the exporter's
	// unflushed edge); nil, false when it does not have one.
	local func(t tlog.Tile) ([]byte, bool)
	cache map[tlog.Tile][]byte
}

func (b *bucketTiles) Height() int { return TileHeight }

func (b *bucketTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := b.readTile(t)
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (b *bucketTiles) readTile(t tlog.Tile) ([]byte, error) {
	if d, ok := b.cache[t]; ok {
		return d, nil
	}
	if b.local != nil {
		if d, ok := b.local(t); ok {
			return d, nil
		}
	}
	want := t.W * tlog.HashSize
	data, err := b.bucket.Get(b.ctx, b.prefix+TilePath(t.L, t.N, t.W))
	if errors.Is(err, ErrNotFound) && t.W != TileWidth {
		// A partial tile may have been completed since; its prefix is the same.
		data, err = b.bucket.Get(b.ctx, b.prefix+TilePath(t.L, t.N, TileWidth))
	}
	if err != nil {
		return nil, err
	}
	if len(data) < want {
		return nil, fmt.Errorf("%w: tile %s holds %d bytes, want %d", ErrTlog, TilePath(t.L, t.N, t.W), len(data), want)
	}
	data = data[:want]
	if b.cache == nil {
		b.cache = map[tlog.Tile][]byte{}
	}
	if len(b.cache) > 4096 {
		clear(b.cache)
	}
	b.cache[t] = data
	return data, nil
}

func (b *bucketTiles) SaveTiles([]tlog.Tile, [][]byte) {}

// readBundle returns the entries of bundle n holding at least w entries.
func readBundle(ctx context.Context, bucket Bucket, prefix string, n int64, w int) ([][]byte, error) {
	data, err := bucket.Get(ctx, prefix+BundlePath(n, w))
	if errors.Is(err, ErrNotFound) && w != TileWidth {
		data, err = bucket.Get(ctx, prefix+BundlePath(n, TileWidth))
	}
	if err != nil {
		return nil, err
	}
	entries, err := SplitBundle(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", BundlePath(n, w), err)
	}
	if len(entries) < w {
		return nil, fmt.Errorf("%w: bundle %s holds %d entries, want %d", ErrTlog, BundlePath(n, w), len(entries), w)
	}
	return entries[:w], nil
}
