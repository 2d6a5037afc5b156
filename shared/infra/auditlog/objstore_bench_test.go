package auditlog

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// The write-once export (chunks, then infos with an expected sequence,
// no roll-ups) against the floor: the previous write path (chunk and
// info in flight together, both rolling up), in the same run, on one
// server. 256 objects of 4 KiB per op, as a flush of many tiles.
//
//	go test ./shared/infra/auditlog -run '^$' -bench ExportPutMany -benchtime 200x
func BenchmarkExportPutMany(b *testing.B) {
	_, _, js := natstest.Run(b)
	ctx := context.Background()
	store, err := NewObjectBucket(ctx, js, 1)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "floor", Storage: jetstream.FileStorage}); err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 4<<10)
	batch := func(i int) []Object {
		objs := make([]Object, 256)
		for j := range objs {
			objs[j] = Object{Key: fmt.Sprintf("tenant/x/tile/0/%d/%d", i, j), Data: data}
		}
		return objs
	}
	b.Run("floor-rollup", func(b *testing.B) {
		for i := range b.N {
			for _, err := range rollupPutMany(ctx, js, "floor", batch(i)) {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.N*256)/b.Elapsed().Seconds(), "objects/s")
	})
	b.Run("write-once", func(b *testing.B) {
		for i := range b.N {
			for _, err := range store.PutMany(ctx, batch(i)) {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.N*256)/b.Elapsed().Seconds(), "objects/s")
	})
}

// rollupPutMany is the previous PutMany (before 2026-12-07), kept as the
// benchmark's floor.
func rollupPutMany(ctx context.Context, js jetstream.JetStream, bucket string, objs []Object) []error {
	errs := make([]error, len(objs))
	var futures []jetstream.PubAckFuture
	for _, o := range objs {
		nameSum := sha256.Sum256([]byte(o.Key))
		nuid := hex.EncodeToString(nameSum[:11])
		sum := sha256.Sum256(o.Data)
		info := jetstream.ObjectInfo{
			ObjectMeta: jetstream.ObjectMeta{Name: o.Key, Opts: &jetstream.ObjectMetaOptions{ChunkSize: objChunkSize}},
			Bucket:     bucket, NUID: nuid, Size: uint64(len(o.Data)), Chunks: 1,
			Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:]),
		}
		meta, _ := json.Marshal(info)
		chunk := nats.NewMsg("$O." + bucket + ".C." + nuid)
		chunk.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		chunk.Data = o.Data
		mm := nats.NewMsg("$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(o.Key)))
		mm.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		mm.Data = meta
		for _, m := range []*nats.Msg{chunk, mm} {
			f, err := js.PublishMsgAsync(m)
			if err != nil {
				errs[0] = err
				return errs
			}
			futures = append(futures, f)
		}
	}
	for _, f := range futures {
		if err := waitAck(ctx, f); err != nil {
			errs[0] = err
		}
	}
	return errs
}
