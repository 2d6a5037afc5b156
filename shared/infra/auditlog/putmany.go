package auditlog

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Object is one write of a PutMany.
type Object struct {
	Key  string
	Data []byte
}

// BatchPutter is implemented by buckets that store many objects faster
// than one Put at a time. PutMany returns one error per object (nil when
// stored). Unlike Put it does not compare with what a key already holds:
// exports are deterministic, so it writes the same bytes again.
type BatchPutter interface {
	PutMany(ctx context.Context, objs []Object) []error
}

var _ BatchPutter = (*ObjectBucketStore)(nil)

// objChunkSize is the object store's default chunk size; PutMany writes
// objects up to it as one chunk.
const objChunkSize = 128 << 10

// PutMany writes small objects in the JetStream object store's own wire
// format (NATS ADR-20: a chunk message on $O.<bucket>.C.<nuid>, then the
// object's info on $O.<bucket>.M.<base64url name>, both rolling up their
// subject), with every publish in flight at once. nats.go's Put makes a
// reply subscription and two round trips per object, which caps an export
// near 3,000 objects/s on a 2-core machine; this is a few times faster.
// The nuid is derived from the name, so writing an object again replaces
// its one chunk instead of leaving an orphan. Objects larger than one chunk
// go through Put.
func (b *ObjectBucketStore) PutMany(ctx context.Context, objs []Object) []error {
	errs := make([]error, len(objs))
	type pending struct {
		i       int
		futures [2]jetstream.PubAckFuture
	}
	var inflight []pending
	const bucket = ObjectBucket
	for i, o := range objs {
		if len(o.Data) == 0 || len(o.Data) > objChunkSize {
			errs[i] = b.Put(ctx, o.Key, o.Data)
			continue
		}
		nameSum := sha256.Sum256([]byte(o.Key))
		nuid := hex.EncodeToString(nameSum[:11]) // 22 characters, like a NUID
		sum := sha256.Sum256(o.Data)
		info := jetstream.ObjectInfo{
			ObjectMeta: jetstream.ObjectMeta{Name: o.Key, Opts: &jetstream.ObjectMetaOptions{ChunkSize: objChunkSize}},
			Bucket:     bucket, NUID: nuid, Size: uint64(len(o.Data)), Chunks: 1,
			Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:]),
		}
		meta, err := json.Marshal(info)
		if err != nil {
			errs[i] = err
			continue
		}
		chunk := nats.NewMsg("$O." + bucket + ".C." + nuid)
		chunk.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		chunk.Data = o.Data
		mm := nats.NewMsg("$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(o.Key)))
		mm.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		mm.Data = meta
		p := pending{i: i}
		for j, m := range []*nats.Msg{chunk, mm} {
			if p.futures[j], err = b.js.PublishMsgAsync(m); err != nil {
				break
			}
		}
		if err != nil {
			errs[i] = fmt.Errorf("auditlog: put object %s: %w", o.Key, err)
			continue
		}
		inflight = append(inflight, p)
	}
	for _, p := range inflight {
		for _, f := range p.futures {
			if f == nil {
				continue
			}
			select {
			case <-f.Ok():
			case err := <-f.Err():
				if errs[p.i] == nil {
					errs[p.i] = fmt.Errorf("auditlog: put object %s: %w", objs[p.i].Key, err)
				}
			case <-ctx.Done():
				if errs[p.i] == nil {
					errs[p.i] = fmt.Errorf("auditlog: put object %s: %w", objs[p.i].Key, ctx.Err())
				}
			}
		}
	}
	return errs
}
