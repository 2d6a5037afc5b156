package vm

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"testing"
)

// What the host reads from and does to disk images between boots: the
// GPT disk GUID (the volume uuid), the sovkeys v1 secret store (layout in
// docs/agent.md, "Secret-store formats"), tampering and corruption.

const (
	sector     = 512
	storeStart = 2048 * sector // partition 128, fixed by the layout
	slotSize   = 512 << 10
)

// diskGUID reads the GPT header's disk GUID in the form blkid prints.
func diskGUID(img []byte) (string, error) {
	h := img[sector : 2*sector]
	if string(h[:8]) != "EFI PART" {
		return "", fmt.Errorf("no GPT header")
	}
	g := h[56:72]
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16]), nil
}

// partition returns the byte range of GPT partition n (1-based).
func partition(img []byte, n int) (start, size int64, err error) {
	h := img[sector : 2*sector]
	entries := int64(binary.LittleEndian.Uint64(h[72:80])) * sector
	esize := int64(binary.LittleEndian.Uint32(h[84:88]))
	e := img[entries+int64(n-1)*esize:]
	first, last := int64(binary.LittleEndian.Uint64(e[32:40])), int64(binary.LittleEndian.Uint64(e[40:48]))
	if first == 0 {
		return 0, 0, fmt.Errorf("no partition %d", n)
	}
	return first * sector, (last - first + 1) * sector, nil
}

type storeRecord struct {
	InstanceID      string `json:"instance_id"`
	EncryptedSecret []byte `json:"encrypted_secret"`
}

type storePayload struct {
	VolumeUUID string        `json:"volume_uuid"`
	Records    []storeRecord `json:"records"`
}

// newestSlot returns the offset in img of the valid store slot with the
// highest generation, and its payload.
func newestSlot(img []byte) (int64, []byte, error) {
	best, bestGen := int64(-1), uint64(0)
	var payload []byte
	for _, off := range []int64{storeStart, storeStart + slotSize} {
		s := img[off : off+slotSize]
		if string(s[:8]) != "SOVKEYSS" {
			continue
		}
		n := int64(binary.BigEndian.Uint32(s[12:16]))
		if 24+n+32 > slotSize {
			continue
		}
		sum := sha256.Sum256(s[:24+n])
		if !bytes.Equal(sum[:], s[24+n:24+n+32]) {
			continue
		}
		if gen := binary.BigEndian.Uint64(s[16:24]); best < 0 || gen > bestGen {
			best, bestGen, payload = off, gen, s[24:24+n]
		}
	}
	if best < 0 {
		return 0, nil, fmt.Errorf("no valid sovkeys store slot")
	}
	return best, payload, nil
}

// readStore returns the volume uuid and current record of a sovkeys volume.
func readStore(t *testing.T, path string) (storePayload, []byte) {
	t.Helper()
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, raw, err := newestSlot(img)
	if err != nil {
		t.Fatal(err)
	}
	var p storePayload
	if err := json.Unmarshal(raw, &p); err != nil || len(p.Records) == 0 {
		t.Fatalf("store payload: %v %q", err, raw)
	}
	return p, img
}

// tamperStore flips one bit of the current encrypted_secret and writes the
// slot's checksum again, as someone holding the disk could: only the
// pinned-key signature of the blob can catch it.
func tamperStore(t *testing.T, src, dst string) {
	t.Helper()
	img, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	off, raw, err := newestSlot(img)
	if err != nil {
		t.Fatal(err)
	}
	var p storePayload
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	old := base64.StdEncoding.EncodeToString(p.Records[0].EncryptedSecret)
	blob := bytes.Clone(p.Records[0].EncryptedSecret)
	blob[len(blob)/2] ^= 1
	edited := bytes.Replace(raw, []byte(old), []byte(base64.StdEncoding.EncodeToString(blob)), 1)
	if bytes.Equal(edited, raw) {
		t.Fatal("tamper: blob not found in the payload")
	}
	copy(raw, edited) // same length: base64 of a blob of the same size
	n := int64(len(raw))
	sum := sha256.Sum256(img[off : off+24+n])
	copy(img[off+24+n:], sum[:])
	writeFile(t, dst, img)
}

// corruptStore breaks both slots' checksums.
func corruptStore(t *testing.T, src, dst string) {
	t.Helper()
	img, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{storeStart, storeStart + slotSize} {
		s := img[off:]
		if string(s[:8]) != "SOVKEYSS" {
			continue
		}
		n := int64(binary.BigEndian.Uint32(s[12:16]))
		s[24+n] ^= 0xff
	}
	writeFile(t, dst, img)
}
