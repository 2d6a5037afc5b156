package auditlog

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// The export object store is write-once (2026-12-07)
//
// OBJ_sovkeys_auditlog holds the only copy of records older than the log
// stream's newest batches, so no credential may remove or replace what is
// in it. mesh.Bootstrap declares its stream with DenyDelete and DenyPurge
// (which also refuses every roll-up), and no user holds a purge right on
// it. Objects are written in the object store's wire format (NATS ADR-20:
// chunks on $O.<bucket>.C.<nuid>, then the object's info on
// $O.<bucket>.M.<base64url name>) without roll-ups:
//
//   - the chunks go first, under a fresh nuid; the info is the commit
//     point, published with Nats-Expected-Last-Subject-Sequence 0, so the
//     server stores it only for a name that has none: the first writer
//     wins, as S3's If-None-Match "*" (a crash before it leaves unreferenced
//     chunks, harmless);
//   - readers take the FIRST info of a name and the first chunks of its
//     nuid up to its size, checked against its SHA-256: whatever a
//     credential appends later (another info, a delete marker, more chunks)
//     changes nothing read here. nats.go's object store reader takes the
//     last info, so it is not used.
//
// A bucket written by earlier versions (roll-ups, one info per name) reads
// the same: its only info is its first. Its old "checkpoint" object stays
// and is no longer replaced; LatestCheckpoint takes the newest of it and
// the history.

// objChunkSize is the object store's default chunk size.
const objChunkSize = 128 << 10

// Object is one write of a PutMany.
type Object struct {
	Key  string
	Data []byte
}

// BatchPutter is implemented by buckets that store many objects faster
// than one Put at a time. PutMany returns one error per object (nil when
// stored or already holding exactly these bytes).
type BatchPutter interface {
	PutMany(ctx context.Context, objs []Object) []error
}

var (
	_ Bucket      = (*ObjectBucketStore)(nil)
	_ BatchPutter = (*ObjectBucketStore)(nil)
)

// ObjectBucketStore exports to the JetStream object store (the standalone
// default), write-once as above. Object names are the keys.
type ObjectBucketStore struct {
	js     jetstream.JetStream
	stream jetstream.Stream
}

// NewObjectBucket opens the object store, declaring it hardened when it is
// missing (mesh.Bootstrap declares it; services may not).
func NewObjectBucket(ctx context.Context, js jetstream.JetStream, replicas int) (*ObjectBucketStore, error) {
	if replicas < 1 || replicas > 5 {
		return nil, fmt.Errorf("%w: auditlog: replicas must be 1..5", shared.ErrConfigValidation)
	}
	if _, err := js.Stream(ctx, shared.ObjectStream(ObjectBucket)); errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket: ObjectBucket, Description: "sovkeys: exported audit records and checkpoints (write-once)",
			Storage: jetstream.FileStorage, Replicas: replicas,
		})
		if err != nil && !errors.Is(err, jetstream.ErrBucketExists) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("auditlog: object store %s: %w", ObjectBucket, err)
		}
		st, err := js.Stream(ctx, shared.ObjectStream(ObjectBucket))
		if err != nil {
			return nil, fmt.Errorf("auditlog: object store %s: %w", ObjectBucket, err)
		}
		cfg := st.CachedInfo().Config
		HardenExport(&cfg)
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			return nil, fmt.Errorf("auditlog: harden object store %s: %w", ObjectBucket, err)
		}
	}
	return OpenObjectBucket(ctx, js)
}

// HardenExport is the export object store's stream configuration: no
// message deletes, no purges, no roll-ups (settings JetStream never lets
// anyone undo). mesh.Bootstrap applies it.
func HardenExport(c *jetstream.StreamConfig) {
	c.DenyDelete = true
	c.DenyPurge = true
	c.AllowRollup = false
}

// OpenObjectBucket opens the existing object store.
func OpenObjectBucket(ctx context.Context, js jetstream.JetStream) (*ObjectBucketStore, error) {
	st, err := js.Stream(ctx, shared.ObjectStream(ObjectBucket))
	if err != nil {
		return nil, fmt.Errorf("auditlog: object store %s: %w", ObjectBucket, err)
	}
	return &ObjectBucketStore{js: js, stream: st}, nil
}

func (b *ObjectBucketStore) String() string { return "jetstream-object-store://" + ObjectBucket }

func metaSubject(key string) string {
	return "$O." + ObjectBucket + ".M." + base64.URLEncoding.EncodeToString([]byte(key))
}

func chunkSubject(nuid string) string { return "$O." + ObjectBucket + ".C." + nuid }

func digestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:])
}

// Put stores data under key once; an object already holding exactly data
// is success, other bytes ErrConflict (left alone).
func (b *ObjectBucketStore) Put(ctx context.Context, key string, data []byte) error {
	return b.PutMany(ctx, []Object{{Key: key, Data: data}})[0]
}

// PutMany writes objects with every publish in flight at once (nats.go's
// Put makes a reply subscription and two round trips per object, which
// caps an export near 3,000 objects/s on 2 cores): all chunks, then, for
// the objects whose chunks all landed, all infos.
func (b *ObjectBucketStore) PutMany(ctx context.Context, objs []Object) []error {
	errs := make([]error, len(objs))
	metas := make([]*nats.Msg, len(objs))
	chunks := make([][]jetstream.PubAckFuture, len(objs))
	for i, o := range objs {
		if len(o.Data) == 0 {
			errs[i] = fmt.Errorf("auditlog: put object %s: empty", o.Key)
			continue
		}
		var id [11]byte
		_, _ = rand.Read(id[:])
		nuid := hex.EncodeToString(id[:]) // 22 characters, like a NUID
		n := (len(o.Data) + objChunkSize - 1) / objChunkSize
		info := jetstream.ObjectInfo{
			ObjectMeta: jetstream.ObjectMeta{Name: o.Key, Opts: &jetstream.ObjectMetaOptions{ChunkSize: objChunkSize}},
			Bucket:     ObjectBucket, NUID: nuid, Size: uint64(len(o.Data)), Chunks: uint32(n),
			Digest: digestOf(o.Data),
		}
		meta, err := json.Marshal(info)
		if err != nil {
			errs[i] = err
			continue
		}
		for off := 0; off < len(o.Data) && err == nil; off += objChunkSize {
			var f jetstream.PubAckFuture
			// No retry on "no responders" (2026-12-07): nats.go resends
			// such a chunk 250 ms later, after the chunks published behind
			// it may have been stored, and the object then reads back out
			// of order (ErrCorrupt; seen at a stream leader's loss in the
			// cluster fault suite). Without the retry that chunk fails and
			// the whole object is put again under a new nuid.
			f, err = b.js.PublishMsgAsync(&nats.Msg{Subject: chunkSubject(nuid), Data: o.Data[off:min(off+objChunkSize, len(o.Data))]},
				jetstream.WithRetryAttempts(0))
			chunks[i] = append(chunks[i], f)
		}
		if err != nil {
			errs[i] = fmt.Errorf("auditlog: put object %s: %w", o.Key, err)
			continue
		}
		mm := nats.NewMsg(metaSubject(o.Key))
		mm.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		mm.Data = meta
		metas[i] = mm
	}
	for i, fs := range chunks {
		for _, f := range fs {
			if err := waitAck(ctx, f); err != nil && errs[i] == nil {
				errs[i] = fmt.Errorf("auditlog: put object %s: %w", objs[i].Key, err)
			}
		}
	}
	commits := make([]jetstream.PubAckFuture, len(objs))
	for i, m := range metas {
		if m == nil || errs[i] != nil {
			continue
		}
		f, err := b.js.PublishMsgAsync(m)
		if err != nil {
			errs[i] = fmt.Errorf("auditlog: put object %s: %w", objs[i].Key, err)
			continue
		}
		commits[i] = f
	}
	for i, f := range commits {
		if f == nil {
			continue
		}
		if err := waitAck(ctx, f); err != nil {
			// The name is taken (or the outcome is unknown): what it holds
			// decides.
			errs[i] = b.same(ctx, objs[i], err)
		}
	}
	return errs
}

// same reports whether key already holds data: nil if so, ErrConflict if
// it holds other bytes, cause if it holds nothing readable.
func (b *ObjectBucketStore) same(ctx context.Context, o Object, cause error) error {
	info, err := b.info(ctx, o.Key)
	switch {
	case errors.Is(err, ErrNotFound):
		return fmt.Errorf("auditlog: put object %s: %w", o.Key, cause)
	case err != nil:
		return err
	case info.Digest == digestOf(o.Data) && info.Size == uint64(len(o.Data)):
		return nil
	}
	return fmt.Errorf("%w: %s", ErrConflict, o.Key)
}

func waitAck(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// info reads the first info stored for key.
func (b *ObjectBucketStore) info(ctx context.Context, key string) (jetstream.ObjectInfo, error) {
	var info jetstream.ObjectInfo
	m, err := b.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(metaSubject(key)))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return info, fmt.Errorf("%w: %s", ErrNotFound, key)
	case err != nil:
		return info, fmt.Errorf("auditlog: object info %s: %w", key, err)
	}
	if err := json.Unmarshal(m.Data, &info); err != nil || info.Name != key || info.NUID == "" {
		return info, fmt.Errorf("%w: %s: unreadable object info", ErrCorrupt, key)
	}
	if info.Deleted {
		return info, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return info, nil
}

// Get reads an object: its first info, then the first chunks of its nuid
// up to its size, checked against its digest (ErrCorrupt otherwise).
func (b *ObjectBucketStore) Get(ctx context.Context, key string) ([]byte, error) {
	info, err := b.info(ctx, key)
	if err != nil {
		return nil, err
	}
	if info.Size > 1<<30 {
		return nil, fmt.Errorf("%w: %s: size %d", ErrCorrupt, key, info.Size)
	}
	var chunks [][]byte
	for seq, size := uint64(1), uint64(0); size < info.Size; {
		m, err := b.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(chunkSubject(info.NUID)))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return nil, fmt.Errorf("%w: %s: chunks missing", ErrCorrupt, key)
		case err != nil:
			return nil, fmt.Errorf("auditlog: get object %s: %w", key, err)
		}
		chunks = append(chunks, m.Data)
		size += uint64(len(m.Data))
		seq = m.Sequence + 1
	}
	if data := inOrder(chunks, info); data != nil {
		return data, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrCorrupt, key)
}

// maxReorder: objects of at most this many chunks are also tried in
// another order when the stored one fails the digest.
const maxReorder = 4

// inOrder joins chunks as stored, or, when that fails info's digest, in
// another order: a build before 2026-12-07 let nats.go resend a chunk
// refused with "no responders" after the chunks behind it were stored, so
// an object it put during a stream leader's loss can be stored out of
// order. The digest (SHA-256) tells the right order; nil if none matches.
func inOrder(chunks [][]byte, info jetstream.ObjectInfo) []byte {
	check := func(order []int) []byte {
		data := make([]byte, 0, info.Size)
		for _, i := range order {
			data = append(data, chunks[i]...)
		}
		if uint64(len(data)) == info.Size && digestOf(data) == info.Digest {
			return data
		}
		return nil
	}
	order := make([]int, len(chunks))
	for i := range order {
		order[i] = i
	}
	if data := check(order); data != nil || len(chunks) < 2 || len(chunks) > maxReorder {
		return data
	}
	var found []byte
	var permute func(k int)
	permute = func(k int) {
		if found != nil {
			return
		}
		if k == len(order) {
			found = check(order)
			return
		}
		for i := k; i < len(order); i++ {
			order[k], order[i] = order[i], order[k]
			permute(k + 1)
			order[k], order[i] = order[i], order[k]
		}
	}
	permute(0)
	return found
}

// List lists names directly inside dir, from the stream's subjects (the
// object store cannot filter by name; fine for verification and loads,
// not for a hot path).
func (b *ObjectBucketStore) List(ctx context.Context, dir string, fn func(name string) error) error {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	info, err := b.stream.Info(ctx, jetstream.WithSubjectFilter("$O."+ObjectBucket+".M.>"))
	if err != nil {
		return fmt.Errorf("auditlog: list objects: %w", err)
	}
	var names []string
	for subj := range info.State.Subjects {
		enc := subj[strings.LastIndexByte(subj, '.')+1:]
		raw, err := base64.URLEncoding.DecodeString(enc)
		if err != nil {
			continue
		}
		rest, ok := strings.CutPrefix(string(raw), prefix)
		if ok && rest != "" && !strings.Contains(rest, "/") {
			names = append(names, rest)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		if err := fn(n); err != nil {
			return err
		}
	}
	return nil
}
