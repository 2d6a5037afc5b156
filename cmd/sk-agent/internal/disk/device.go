package disk

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotEmpty means a device holds something (a partition table, a
// filesystem signature, any non-zero byte where those live).
var ErrNotEmpty = errors.New("disk: device is not empty")

// ErrInUse means the device or one of its partitions is mounted or held by
// another device (device-mapper, md, LVM).
var ErrInUse = errors.New("disk: device is in use")

// ErrNotBlock means the path is not a block device.
var ErrNotBlock = errors.New("disk: not a block device")

// Disk is an open whole-disk block device.
type Disk struct {
	Path       string // as given
	Name       string // kernel name (sysfs), e.g. nvme1n1, loop0
	SectorSize int
	Size       int64
	f          *os.File
}

// Open opens path (a whole-disk block device, symlinks allowed) for
// reading, and for writing when rw.
func Open(path string, rw bool) (*Disk, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	if st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotBlock, path)
	}
	flag := os.O_RDONLY
	if rw {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(real, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	d := &Disk{Path: path, Name: filepath.Base(real), f: f, SectorSize: 512}
	if ss, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET); err == nil && ss > 0 {
		d.SectorSize = ss
	}
	if d.Size, err = f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, fmt.Errorf("disk: size: %w", err)
	}
	return d, nil
}

// Close closes the device. It is idempotent.
func (d *Disk) Close() error {
	if d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f = nil
	return err
}

// ReadAt reads the disk.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

// WriteAt writes the disk.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }

// Sync flushes writes to the device.
func (d *Disk) Sync() error { return d.f.Sync() }

// GPT reads the disk's GPT.
func (d *Disk) GPT() (*Table, error) { return ReadGPT(d.f, d.SectorSize) }

// probeSpan is how much of each end of the disk must be zero for it to
// count as empty: partition tables, filesystem, LUKS, LVM, md and ZFS
// labels all live in the first or last MiB.
const probeSpan = 1 << 20

// CheckEmpty returns ErrNotEmpty (saying where) unless the first and last
// MiB of the disk are all zero, as on a new cloud volume.
func (d *Disk) CheckEmpty() error {
	buf := make([]byte, min(probeSpan, d.Size))
	for _, off := range []int64{0, max(0, d.Size-int64(len(buf)))} {
		n, err := d.f.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("disk: read %s: %w", d.Path, err)
		}
		if i := bytes.IndexFunc(buf[:n], func(r rune) bool { return r != 0 }); i >= 0 {
			what := "data"
			switch {
			case off == 0 && n > 1024 && string(buf[512:520]) == gptSignature:
				what = "a GPT partition table"
			case off == 0 && n > 512 && buf[510] == 0x55 && buf[511] == 0xaa:
				what = "a partition table or boot sector"
			case off == 0 && n > 6 && string(buf[:6]) == "LUKS\xba\xbe":
				what = "a LUKS header"
			}
			return fmt.Errorf("%w: %s holds %s (non-zero byte at offset %d)", ErrNotEmpty, d.Path, what, off+int64(i))
		}
	}
	return nil
}

// CheckNotInUse returns ErrInUse if the disk or any of its partitions is
// mounted (per mountsFile, normally /proc/self/mounts) or has holders in
// sysfs (sysRoot, normally /sys).
func (d *Disk) CheckNotInUse(sysRoot, mountsFile string) error {
	names := append([]string{d.Name}, partitionNames(sysRoot, d.Name)...)
	for _, n := range names {
		if h, _ := os.ReadDir(filepath.Join(sysRoot, "class", "block", n, "holders")); len(h) > 0 {
			return fmt.Errorf("%w: /dev/%s is held by %s", ErrInUse, n, h[0].Name())
		}
	}
	f, err := os.Open(mountsFile)
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		for _, n := range names {
			if fields[0] == "/dev/"+n {
				return fmt.Errorf("%w: /dev/%s is mounted on %s", ErrInUse, n, fields[1])
			}
		}
	}
	return sc.Err()
}

// partitionNames lists the kernel's partitions of disk (sysfs).
func partitionNames(sysRoot, disk string) []string {
	ents, _ := os.ReadDir(filepath.Join(sysRoot, "class", "block", disk))
	var out []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(sysRoot, "class", "block", disk, e.Name(), "partition")); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// KernelPartition returns /dev/<name> of partition n of the disk as the
// kernel exposes it (sysfs), or "" when the kernel has none (no partition
// scan, or a kernel without GPT support).
func (d *Disk) KernelPartition(sysRoot string, n int) string {
	for _, p := range partitionNames(sysRoot, d.Name) {
		b, err := os.ReadFile(filepath.Join(sysRoot, "class", "block", d.Name, p, "partition"))
		if err != nil {
			continue
		}
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v == n {
			dev := "/dev/" + p
			if _, err := os.Stat(dev); err == nil {
				return dev
			}
		}
	}
	return ""
}

// Lock takes an exclusive BSD lock on the whole-disk device, as systemd's
// block-device locking convention asks of tools that change a disk (udev
// then does not probe it half-written), and so that two sk-agent runs do
// not work on one volume at once. A holder that keeps it (another agent)
// makes Lock fail with ErrInUse after wait; short holders (udev's probes)
// are waited out. The lock goes with Close.
func (d *Disk) Lock(ctx context.Context, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(d.f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("disk: lock %s: %w", d.Path, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: another process (another sk-agent?) holds a lock on %s", ErrInUse, d.Path)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
