package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf16"
)

// The original agent formats partition 128 with mkfs.fat (FAT12 at 1 MiB)
// and keeps the raw blob in /encrypted_secret.bin. This is a minimal
// FAT12/FAT16 reader for that one file, and an in-place writer that
// replaces its contents when the new blob fits in the clusters it already
// owns (so that the original agent can still read the store afterwards).

// OriginalFileName is the original agent's file.
const OriginalFileName = "encrypted_secret.bin"

type fatFile struct {
	dirEntryOff int64   // offset of the 8.3 directory entry
	clusters    []int64 // byte offsets of the file's clusters
	clusterSize int64
	size        int64
}

func isFATBootSector(b []byte) bool {
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xaa || (b[0] != 0xeb && b[0] != 0xe9) {
		return false
	}
	bps := binary.LittleEndian.Uint16(b[11:])
	return bps >= 512 && bps <= 4096 && bps&(bps-1) == 0 && b[13] != 0 && b[16] != 0
}

type bpb struct {
	bytesPerSec, secPerClus, reserved, numFATs, rootEnts int64
	fatSectors, totalSectors                             int64
}

func (p bpb) rootOff() int64   { return (p.reserved + p.numFATs*p.fatSectors) * p.bytesPerSec }
func (p bpb) dataOff() int64   { return p.rootOff() + p.rootEnts*32 }
func (p bpb) clusterSz() int64 { return p.secPerClus * p.bytesPerSec }
func (p bpb) clusters() int64 {
	return (p.totalSectors*p.bytesPerSec - p.dataOff()) / p.clusterSz()
}

func parseBPB(b []byte) (bpb, error) {
	le := binary.LittleEndian
	p := bpb{
		bytesPerSec: int64(le.Uint16(b[11:])), secPerClus: int64(b[13]), reserved: int64(le.Uint16(b[14:])),
		numFATs: int64(b[16]), rootEnts: int64(le.Uint16(b[17:])), fatSectors: int64(le.Uint16(b[22:])),
		totalSectors: int64(le.Uint16(b[19:])),
	}
	if p.totalSectors == 0 {
		p.totalSectors = int64(le.Uint32(b[32:]))
	}
	if p.fatSectors == 0 || p.rootEnts == 0 || p.reserved == 0 || p.dataOff() >= p.totalSectors*p.bytesPerSec {
		return p, errors.New("not a FAT12/FAT16 filesystem")
	}
	return p, nil
}

func readOriginal(part io.ReaderAt, size int64) (*Store, error) {
	ff, err := findOriginalFile(part, size)
	if err != nil {
		return nil, fmt.Errorf("%w: original store: %v", ErrCorrupt, err)
	}
	blob := make([]byte, 0, ff.size)
	for _, off := range ff.clusters {
		n := min(ff.clusterSize, ff.size-int64(len(blob)))
		buf := make([]byte, n)
		if _, err := part.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("store: read %s: %w", OriginalFileName, err)
		}
		blob = append(blob, buf...)
	}
	if len(blob) == 0 {
		return nil, fmt.Errorf("%w: original store: %s is empty", ErrCorrupt, OriginalFileName)
	}
	return &Store{Format: FormatOriginal, Records: []Record{{EncryptedSecret: blob}}, fat: ff}, nil
}

func findOriginalFile(part io.ReaderAt, size int64) (*fatFile, error) {
	boot := make([]byte, 512)
	if _, err := part.ReadAt(boot, 0); err != nil {
		return nil, err
	}
	p, err := parseBPB(boot)
	if err != nil {
		return nil, err
	}
	if p.totalSectors*p.bytesPerSec > size {
		return nil, errors.New("filesystem larger than its partition")
	}
	fat := make([]byte, p.fatSectors*p.bytesPerSec)
	if _, err := part.ReadAt(fat, p.reserved*p.bytesPerSec); err != nil {
		return nil, err
	}
	root := make([]byte, p.rootEnts*32)
	if _, err := part.ReadAt(root, p.rootOff()); err != nil {
		return nil, err
	}
	fat12 := p.clusters() < 4085
	next := func(c int64) int64 {
		if fat12 {
			o := c + c/2
			if o+1 >= int64(len(fat)) {
				return -1
			}
			v := int64(binary.LittleEndian.Uint16(fat[o:]))
			if c%2 == 1 {
				return v >> 4
			}
			return v & 0xfff
		}
		if 2*c+1 >= int64(len(fat)) {
			return -1
		}
		return int64(binary.LittleEndian.Uint16(fat[2*c:]))
	}
	eoc := int64(0xff8)
	if !fat12 {
		eoc = 0xfff8
	}
	var lfn [20][]uint16
	for i := int64(0); i < p.rootEnts; i++ {
		e := root[i*32 : (i+1)*32]
		switch {
		case e[0] == 0:
			return nil, fmt.Errorf("no %s in the root directory", OriginalFileName)
		case e[0] == 0xe5:
			lfn = [20][]uint16{}
			continue
		case e[11] == 0x0f: // long-name entry
			seq := int(e[0] & 0x1f)
			if seq == 0 || seq >= len(lfn) {
				continue
			}
			var cs []uint16
			for _, r := range [][2]int{{1, 11}, {14, 26}, {28, 32}} {
				for j := r[0]; j < r[1]; j += 2 {
					cs = append(cs, binary.LittleEndian.Uint16(e[j:]))
				}
			}
			lfn[seq] = cs
			continue
		}
		var name []uint16
		for _, part := range lfn[1:] {
			name = append(name, part...)
		}
		lfn = [20][]uint16{}
		if e[11]&0x18 != 0 { // directory or volume label
			continue
		}
		long := string(utf16.Decode(name))
		if k := strings.IndexRune(long, 0); k >= 0 {
			long = long[:k]
		}
		if !strings.EqualFold(long, OriginalFileName) {
			continue
		}
		ff := &fatFile{dirEntryOff: p.rootOff() + i*32, clusterSize: p.clusterSz(), size: int64(binary.LittleEndian.Uint32(e[28:]))}
		if ff.size > MaxBlobBytes {
			return nil, fmt.Errorf("%s has %d bytes", OriginalFileName, ff.size)
		}
		c := int64(binary.LittleEndian.Uint16(e[26:]))
		for c >= 2 && c < eoc && len(ff.clusters) < 64 {
			if c-2 >= p.clusters() {
				return nil, errors.New("cluster chain leaves the filesystem")
			}
			ff.clusters = append(ff.clusters, p.dataOff()+(c-2)*p.clusterSz())
			c = next(c)
		}
		if int64(len(ff.clusters))*ff.clusterSize < ff.size {
			return nil, errors.New("cluster chain shorter than the file")
		}
		return ff, nil
	}
	return nil, fmt.Errorf("no %s in the root directory", OriginalFileName)
}

// MaxBlobBytes bounds an encrypted secret read from a store.
const MaxBlobBytes = 4096

// WriteOriginal replaces encrypted_secret.bin of an original store in
// place. It fails (changing nothing) when the blob does not fit in the
// clusters the file already owns.
func WriteOriginal(part ReadWriterAt, s *Store, sync func() error) error {
	if s.Format != FormatOriginal || s.fat == nil {
		return errors.New("store: not an original store")
	}
	blob := s.Current().EncryptedSecret
	ff := s.fat
	if int64(len(blob)) > int64(len(ff.clusters))*ff.clusterSize {
		return fmt.Errorf("store: new blob (%d bytes) does not fit in the %d bytes %s owns", len(blob), int64(len(ff.clusters))*ff.clusterSize, OriginalFileName)
	}
	rest := blob
	for _, off := range ff.clusters {
		chunk := make([]byte, ff.clusterSize)
		n := copy(chunk, rest)
		rest = rest[n:]
		if _, err := part.WriteAt(chunk, off); err != nil {
			return fmt.Errorf("store: write %s: %w", OriginalFileName, err)
		}
	}
	size := make([]byte, 4)
	binary.LittleEndian.PutUint32(size, uint32(len(blob)))
	if _, err := part.WriteAt(size, ff.dirEntryOff+28); err != nil {
		return fmt.Errorf("store: write directory entry: %w", err)
	}
	ff.size = int64(len(blob))
	if sync != nil {
		return sync()
	}
	return nil
}
