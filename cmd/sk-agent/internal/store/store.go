// Package store reads and writes the secret store: the 1 MiB GPT partition
// 128 of a sovkeys volume that holds the volume's encrypted_secret (never
// the secret itself). Two formats are read:
//
//   - FormatV1 (written by sk-agent): two slots of 512 KiB, each a header
//     ("SOVKEYSS", version, length, generation), a JSON payload and a
//     SHA-256 over both. A write goes to the slot not holding the newest
//     valid copy, so a torn write never loses the secret store.
//   - FormatOriginal (written by the original Sovereign Keys agent): a FAT
//     filesystem whose root holds encrypted_secret.bin (the raw blob).
//
// See docs/agent.md.
package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Format is the on-disk format of a secret store.
type Format int

const (
	// FormatOriginal is the original agent's FAT + encrypted_secret.bin.
	FormatOriginal Format = 0
	// FormatV1 is sk-agent's two-slot format.
	FormatV1 Format = 1
)

func (f Format) String() string {
	switch f {
	case FormatOriginal:
		return "original (FAT, encrypted_secret.bin)"
	case FormatV1:
		return "sovkeys v1"
	}
	return fmt.Sprintf("format %d", int(f))
}

// Errors.
var (
	// ErrEmpty: the partition is all zero (never written).
	ErrEmpty = errors.New("store: secret store is empty")
	// ErrCorrupt: the partition holds no readable secret store (unknown
	// format, bad checksum in every slot, malformed payload).
	ErrCorrupt = errors.New("store: secret store is corrupt or not a secret store")
	// ErrTooSmall: the partition cannot hold a store.
	ErrTooSmall = errors.New("store: secret store partition is too small")
)

// Size is the size of the secret store partition the agent creates (the
// original's 2048 sectors of 512 bytes).
const Size = 1 << 20

const (
	magic      = "SOVKEYSS"
	headerLen  = 24 // magic 8, version 2, reserved 2, payload length 4, generation 8
	sumLen     = sha256.Size
	slotSize   = Size / 2
	maxPayload = slotSize - headerLen - sumLen
	// MaxRecords bounds the history kept in a v1 store.
	MaxRecords = 8
)

// Record is one encrypted_secret the volume has held.
type Record struct {
	// InstanceID owns the blob (the instance that generated or converted it).
	InstanceID      string `json:"instance_id"`
	EncryptedSecret []byte `json:"encrypted_secret"`
	// Signature is the service's signature over EncryptedSecret (empty for
	// a blob imported from an original store, which keeps none).
	Signature []byte `json:"encrypted_secret_signature,omitempty"`
	// Op is generate-secret or convert-secret.
	Op               string    `json:"op"`
	SourceInstanceID string    `json:"source_instance_id,omitempty"`
	Time             time.Time `json:"time"`
}

// Store is a decoded secret store.
type Store struct {
	Format Format `json:"-"`
	// VolumeUUID is the GPT disk GUID the blobs are bound to (v1 only).
	VolumeUUID string `json:"volume_uuid"`
	// Records holds the current blob first, then older ones (v1 only).
	Records []Record `json:"records"`

	generation uint64
	fat        *fatFile // FormatOriginal: where encrypted_secret.bin lives
}

// Current is the blob in use.
func (s *Store) Current() Record {
	if len(s.Records) == 0 {
		return Record{}
	}
	return s.Records[0]
}

// Push makes r current, keeping at most MaxRecords.
func (s *Store) Push(r Record) {
	s.Records = append([]Record{r}, s.Records...)
	if len(s.Records) > MaxRecords {
		s.Records = s.Records[:MaxRecords]
	}
}

// ReadWriterAt is the partition (or the disk with an offset, see Section).
type ReadWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

// Read decodes the store in part (size bytes).
func Read(part io.ReaderAt, size int64) (*Store, error) {
	if size < Size {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooSmall, size)
	}
	head := make([]byte, 512)
	if _, err := part.ReadAt(head, 0); err != nil {
		return nil, fmt.Errorf("store: read: %w", err)
	}
	if isFATBootSector(head) {
		return readOriginal(part, size)
	}
	// v1, including a slot 0 torn to zero or garbage with slot 1 intact.
	st, err := readV1(part)
	switch {
	case err == nil:
		return st, nil
	case string(head[:len(magic)]) == magic:
		return nil, err
	case bytes.Equal(head, make([]byte, len(head))):
		return nil, ErrEmpty
	}
	return nil, fmt.Errorf("%w: unknown format", ErrCorrupt)
}

func readV1(part io.ReaderAt) (*Store, error) {
	var best *Store
	var errs []error
	for slot := range 2 {
		s, err := readSlot(part, int64(slot*slotSize))
		if err != nil {
			errs = append(errs, fmt.Errorf("slot %d: %w", slot, err))
			continue
		}
		if best == nil || s.generation > best.generation {
			best = s
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(errs...))
	}
	return best, nil
}

func readSlot(part io.ReaderAt, off int64) (*Store, error) {
	h := make([]byte, headerLen)
	if _, err := part.ReadAt(h, off); err != nil {
		return nil, err
	}
	if string(h[:len(magic)]) != magic {
		return nil, errors.New("no store header")
	}
	be := binary.BigEndian
	if v := be.Uint16(h[8:]); v != uint16(FormatV1) {
		return nil, fmt.Errorf("unsupported version %d (this agent reads version %d)", v, FormatV1)
	}
	n := be.Uint32(h[12:])
	if n > maxPayload {
		return nil, fmt.Errorf("payload length %d", n)
	}
	rest := make([]byte, int(n)+sumLen)
	if _, err := part.ReadAt(rest, off+headerLen); err != nil {
		return nil, err
	}
	sum := sha256.New()
	sum.Write(h)
	sum.Write(rest[:n])
	if !bytes.Equal(sum.Sum(nil), rest[n:]) {
		return nil, errors.New("checksum mismatch")
	}
	dec := json.NewDecoder(bytes.NewReader(rest[:n]))
	dec.DisallowUnknownFields()
	s := &Store{Format: FormatV1, generation: be.Uint64(h[16:])}
	if err := dec.Decode(s); err != nil {
		return nil, fmt.Errorf("payload: %v", err)
	}
	if len(s.Records) == 0 || len(s.Current().EncryptedSecret) == 0 {
		return nil, errors.New("no encrypted secret")
	}
	return s, nil
}

// WriteV1 writes s in format v1 to the slot not holding the newest valid
// copy (both slots are considered stale on a store not yet in v1), then
// syncs via sync when non-nil.
func WriteV1(part ReadWriterAt, s *Store, sync func() error) error {
	payload, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if len(payload) > maxPayload {
		return fmt.Errorf("store: payload of %d bytes exceeds %d", len(payload), maxPayload)
	}
	slot := int64(0)
	gen := uint64(1)
	if cur, err := readV1(part); err == nil {
		gen = cur.generation + 1
		if a, err := readSlot(part, 0); err == nil && a.generation == cur.generation {
			slot = 1
		}
	}
	buf := make([]byte, slotSize)
	copy(buf, magic)
	be := binary.BigEndian
	be.PutUint16(buf[8:], uint16(FormatV1))
	be.PutUint32(buf[12:], uint32(len(payload)))
	be.PutUint64(buf[16:], gen)
	copy(buf[headerLen:], payload)
	sum := sha256.Sum256(buf[:headerLen+len(payload)])
	copy(buf[headerLen+len(payload):], sum[:])
	if _, err := part.WriteAt(buf, slot*slotSize); err != nil {
		return fmt.Errorf("store: write: %w", err)
	}
	if sync != nil {
		if err := sync(); err != nil {
			return fmt.Errorf("store: sync: %w", err)
		}
	}
	s.Format, s.generation = FormatV1, gen
	return nil
}

// Init writes a fresh v1 store over whatever the partition held (both
// slots: the first with s, the second zeroed).
func Init(part ReadWriterAt, s *Store, sync func() error) error {
	if _, err := part.WriteAt(make([]byte, Size), 0); err != nil {
		return fmt.Errorf("store: clear: %w", err)
	}
	return WriteV1(part, s, sync)
}

// Section is a window of a disk, as a partition.
type Section struct {
	RW     ReadWriterAt
	Offset int64
	Size   int64
}

// ReadAt reads within the window.
func (s Section) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.Size {
		return 0, io.ErrUnexpectedEOF
	}
	return s.RW.ReadAt(p, s.Offset+off)
}

// WriteAt writes within the window.
func (s Section) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.Size {
		return 0, errors.New("store: write outside the partition")
	}
	return s.RW.WriteAt(p, s.Offset+off)
}
