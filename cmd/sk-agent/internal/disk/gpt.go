// Package disk reads what the agent needs from a block device: its GPT
// (disk GUID = the volume uuid, partition extents), whether it holds
// anything, and a device node for one of its partitions.
package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// ErrNoGPT means the device has no valid GPT (primary header and entries
// with matching CRCs).
var ErrNoGPT = errors.New("disk: no valid GPT")

// Partition is one GPT entry, in bytes from the start of the disk.
type Partition struct {
	Number      int
	Start, Size int64
	Name        string
	Attributes  uint64
}

// Table is the part of a GPT the agent uses.
type Table struct {
	// DiskGUID is the disk GUID in the form blkid prints as PTUUID
	// (lowercase, dashed): the original agent's volume_uuid.
	DiskGUID   string
	SectorSize int
	Partitions map[int]Partition
}

const (
	gptSignature  = "EFI PART"
	maxGPTEntries = 1024
)

// ReadGPT parses the primary GPT of r with the given logical sector size,
// checking both CRCs.
func ReadGPT(r io.ReaderAt, sectorSize int) (*Table, error) {
	hdr := make([]byte, sectorSize)
	if _, err := r.ReadAt(hdr, int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("%w: read header: %v", ErrNoGPT, err)
	}
	if string(hdr[:8]) != gptSignature {
		return nil, fmt.Errorf("%w: no %q signature at LBA 1", ErrNoGPT, gptSignature)
	}
	le := binary.LittleEndian
	hsize := le.Uint32(hdr[12:])
	if hsize < 92 || int(hsize) > sectorSize {
		return nil, fmt.Errorf("%w: header size %d", ErrNoGPT, hsize)
	}
	h := bytes.Clone(hdr[:hsize])
	want := le.Uint32(h[16:])
	le.PutUint32(h[16:], 0)
	if crc32.ChecksumIEEE(h) != want {
		return nil, fmt.Errorf("%w: header CRC mismatch", ErrNoGPT)
	}
	entryLBA := int64(le.Uint64(hdr[72:]))
	n, esize := le.Uint32(hdr[80:]), le.Uint32(hdr[84:])
	if n == 0 || n > maxGPTEntries || esize < 128 || esize > 1024 || esize%8 != 0 {
		return nil, fmt.Errorf("%w: %d entries of %d bytes", ErrNoGPT, n, esize)
	}
	entries := make([]byte, int(n)*int(esize))
	if _, err := r.ReadAt(entries, entryLBA*int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("%w: read entries: %v", ErrNoGPT, err)
	}
	if crc32.ChecksumIEEE(entries) != le.Uint32(hdr[88:]) {
		return nil, fmt.Errorf("%w: partition entries CRC mismatch", ErrNoGPT)
	}
	t := &Table{DiskGUID: FormatGUID(hdr[56:72]), SectorSize: sectorSize, Partitions: map[int]Partition{}}
	for i := 0; i < int(n); i++ {
		e := entries[i*int(esize) : (i+1)*int(esize)]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue // unused entry
		}
		first, last := int64(le.Uint64(e[32:])), int64(le.Uint64(e[40:]))
		if last < first {
			return nil, fmt.Errorf("%w: entry %d ends before it starts", ErrNoGPT, i+1)
		}
		name := make([]uint16, 0, 36)
		for j := 56; j+1 < 128; j += 2 {
			c := le.Uint16(e[j:])
			if c == 0 {
				break
			}
			name = append(name, c)
		}
		t.Partitions[i+1] = Partition{
			Number: i + 1, Start: first * int64(sectorSize), Size: (last - first + 1) * int64(sectorSize),
			Name: string(utf16.Decode(name)), Attributes: le.Uint64(e[48:]),
		}
	}
	return t, nil
}

// FormatGUID formats a 16-byte on-disk (mixed-endian) GUID.
func FormatGUID(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(b[0:]), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16])
}
