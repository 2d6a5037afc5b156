package store

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// mem is an in-memory partition.
type mem []byte

func (m mem) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(m)) {
		return 0, errors.New("eof")
	}
	return copy(p, m[off:]), nil
}

func (m mem) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(m)) {
		return 0, errors.New("eof")
	}
	return copy(m[off:], p), nil
}

func rec(inst string, blob byte) Record {
	return Record{InstanceID: inst, EncryptedSecret: bytes.Repeat([]byte{blob}, 100), Signature: []byte{1, 2, 3},
		Op: "generate-secret", Time: time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)}
}

func TestV1RoundTripAndSlots(t *testing.T) {
	part := make(mem, Size)
	if _, err := Read(part, Size); !errors.Is(err, ErrEmpty) {
		t.Fatalf("empty partition: %v", err)
	}
	s := &Store{VolumeUUID: "vol-1"}
	s.Push(rec("i-1", 0xaa))
	if err := Init(part, s, nil); err != nil {
		t.Fatal(err)
	}
	for i := range MaxRecords + 3 { // history is bounded
		got, err := Read(part, Size)
		if err != nil {
			t.Fatal(err)
		}
		got.Push(rec("i-2", byte(i)))
		if err := WriteV1(part, got, nil); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Read(part, Size)
	if err != nil {
		t.Fatal(err)
	}
	if got.Format != FormatV1 || got.VolumeUUID != "vol-1" || len(got.Records) != MaxRecords ||
		got.Current().EncryptedSecret[0] != MaxRecords+2 || got.Current().InstanceID != "i-2" {
		t.Fatalf("read back %+v", got)
	}

	// A torn write of the newest slot leaves the previous generation readable.
	newest := int64(0)
	if a, err := readSlot(part, 0); err != nil || a.generation != got.generation {
		newest = slotSize
	}
	torn := append(mem{}, part...)
	torn[newest+headerLen+10] ^= 1
	prev, err := Read(torn, Size)
	if err != nil || prev.generation != got.generation-1 {
		t.Fatalf("after a torn write: %v (generation %d, want %d)", err, prev.generation, got.generation-1)
	}
	// Garbage over slot 0's header still finds slot 1 when it holds a copy.
	if newest == slotSize {
		g := append(mem{}, part...)
		copy(g, "garbage garbage garbage")
		if s, err := Read(g, Size); err != nil || s.generation != got.generation {
			t.Fatalf("slot 1 behind a garbled slot 0: %v", err)
		}
	}
	// Zeroing slot 0 entirely (a torn Init) still finds slot 1.
	if newest == slotSize {
		z := append(mem{}, part...)
		clear(z[:slotSize])
		if s, err := Read(z, Size); err != nil || s.generation != got.generation {
			t.Fatalf("slot 1 alone: %v", err)
		}
	}
}

func TestReadRefuses(t *testing.T) {
	good := make(mem, Size)
	s := &Store{VolumeUUID: "vol-1"}
	s.Push(rec("i-1", 0xaa))
	if err := Init(good, s, nil); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(m mem){
		"flipped blob byte": func(m mem) { m[headerLen+40] ^= 1 },
		"flipped checksum":  func(m mem) { m[headerLen+int(good[15])+int(good[14])<<8] ^= 1 },
		"unknown version":   func(m mem) { m[9] = 9 },
		"garbage":           func(m mem) { copy(m, "not a secret store at all") },
		"payload too long":  func(m mem) { m[12], m[13] = 0x7f, 0xff },
	} {
		t.Run(name, func(t *testing.T) {
			m := append(mem{}, good...)
			mutate(m)
			if _, err := Read(m, Size); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v", err)
			}
		})
	}
	if _, err := Read(make(mem, 4096), 4096); !errors.Is(err, ErrTooSmall) {
		t.Fatalf("small partition: %v", err)
	}
}

// A store made the original agent's way (mkfs.fat, then the blob copied
// in as encrypted_secret.bin) reads back, and an in-place replacement is
// what mtools (hence the original agent) reads afterwards.
func TestOriginalFATStore(t *testing.T) {
	for _, tool := range []string{"mkfs.fat", "mcopy", "mtype"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (dosfstools, mtools): %v", tool, err)
		}
	}
	dir := t.TempDir()
	img, blobFile := filepath.Join(dir, "store.img"), filepath.Join(dir, "encrypted_secret.bin")
	blob := bytes.Repeat([]byte("0123456789"), 9) // 90 bytes, like the original's blobs
	if err := os.WriteFile(blobFile, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"mkfs.fat", "-C", img, "1024"},
		{"mcopy", "-i", img, filepath.Join(dir, "encrypted_secret.bin"), "::"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	part := mem(raw)
	s, err := Read(part, int64(len(part)))
	if err != nil {
		t.Fatal(err)
	}
	if s.Format != FormatOriginal || !bytes.Equal(s.Current().EncryptedSecret, blob) {
		t.Fatalf("read %v %q", s.Format, s.Current().EncryptedSecret)
	}
	newBlob := bytes.Repeat([]byte("abcdefghij"), 11)
	s.Records[0].EncryptedSecret = newBlob
	if err := WriteOriginal(part, s, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, part, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mtype", "-i", img, "::encrypted_secret.bin").Output()
	if err != nil || !bytes.Equal(out, newBlob) {
		t.Fatalf("mtype after in-place write: %q %v", out, err)
	}
	s.Records[0].EncryptedSecret = make([]byte, 64<<10)
	if err := WriteOriginal(part, s, nil); err == nil {
		t.Fatal("a blob larger than the file's clusters was written")
	}
}
