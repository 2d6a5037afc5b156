package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/disk"
	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/secmem"
	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/store"
)

// Layout of a sovkeys volume, as the original agent makes it.
const (
	StorePartition = 128 // 1 MiB "Secret Store"
	DataPartition  = 1   // LUKS, the rest of the disk
	storeFirstLBA  = 2048
	storeLastLBA   = storeFirstLBA + store.Size/512 - 1
	dataFirstLBA   = storeLastLBA + 1
)

// volume is an opened sovkeys volume.
type volume struct {
	d          *disk.Disk
	tbl        *disk.Table
	sstore     disk.Partition
	data       disk.Partition
	volumeUUID string
}

func (v *volume) Close() error { return v.d.Close() }

func (v *volume) section() store.Section {
	return store.Section{RW: v.d, Offset: v.sstore.Start, Size: v.sstore.Size}
}

// mapperName is the device-mapper name of the volume's LUKS mapping.
func (v *volume) mapperName() string { return "sk-" + v.volumeUUID }

// openVolume opens a device prepared by prep-dev (or the original agent).
// lockWait bounds the wait for another holder of a device's lock.
const lockWait = 10 * time.Second

func (a *Agent) openVolume(ctx context.Context, path string, rw, lock bool) (*volume, error) {
	d, err := disk.Open(path, rw)
	if err != nil {
		return nil, err
	}
	if lock {
		if err := d.Lock(ctx, lockWait); err != nil {
			d.Close()
			return nil, err
		}
	}
	tbl, err := d.GPT()
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("%w: %s: %w (prepare it with `sk-agent prep-dev`)", ErrNotVolume, path, err)
	}
	ss, ok1 := tbl.Partitions[StorePartition]
	data, ok2 := tbl.Partitions[DataPartition]
	if !ok1 || !ok2 {
		d.Close()
		return nil, fmt.Errorf("%w: %s has no partitions %d (secret store) and %d (data)", ErrNotVolume, path, StorePartition, DataPartition)
	}
	if ss.Size < store.Size {
		d.Close()
		return nil, fmt.Errorf("%w: %s: partition %d has %d bytes, want %d", ErrNotVolume, path, StorePartition, ss.Size, store.Size)
	}
	return &volume{d: d, tbl: tbl, sstore: ss, data: data, volumeUUID: tbl.DiskGUID}, nil
}

// readStore reads the secret store and checks what can be checked without
// the service: the volume binding, the owner and the stored signature.
func (a *Agent) readStore(ctx context.Context, v *volume) (*store.Store, error) {
	s, err := store.Read(v.section(), v.sstore.Size)
	if err != nil {
		return nil, fmt.Errorf("secret store of %s: %w", v.d.Path, err)
	}
	if s.Format == store.FormatV1 && s.VolumeUUID != v.volumeUUID {
		return nil, fmt.Errorf("%w: the store names volume %s but the disk GUID of %s is %s", ErrVolumeBound, s.VolumeUUID, v.d.Path, v.volumeUUID)
	}
	return s, nil
}

// verifyStored checks the stored signature of the current blob against the
// pinned key (stores written by the original agent keep no signature; the
// service then is the only check).
func (a *Agent) verifyStored(ctx context.Context, s *store.Store) error {
	cur := s.Current()
	if len(cur.Signature) == 0 {
		if s.Format == store.FormatV1 {
			return fmt.Errorf("%w: the stored blob has no signature", store.ErrCorrupt)
		}
		return nil
	}
	api, err := a.api(ctx)
	if err != nil {
		return err
	}
	if err := api.VerifyBlob(blobOf(cur)); err != nil {
		return fmt.Errorf("the blob in the secret store was not issued by the service whose key is pinned (tampered, or from another deployment): %w", err)
	}
	return nil
}

// checkOwner refuses early, with the remedy, a store owned by another
// instance (the service would refuse it too).
func (a *Agent) checkOwner(ctx context.Context, s *store.Store) error {
	owner := s.Current().InstanceID
	if owner == "" { // original store: the service decides
		return nil
	}
	me, err := a.instance(ctx)
	if err != nil {
		return err
	}
	if owner != me {
		return fmt.Errorf("%w: %s, this is %s; restored from another instance? run `sk-agent takeown -i %s DEVICE` first", ErrNotOwner, owner, me, owner)
	}
	return nil
}

// dataDevice returns a device node for the data partition: the kernel's
// partition node, or, when the kernel exposes none (no partition scan), a
// loop device over the partition's byte range (loop is then true and the
// caller detaches it when done).
func (a *Agent) dataDevice(ctx context.Context, v *volume) (dev string, loop bool, err error) {
	if p := v.d.KernelPartition(a.SysRoot, DataPartition); p != "" {
		return p, false, nil
	}
	real, err := filepath.EvalSymlinks(v.d.Path)
	if err != nil {
		return "", false, err
	}
	a.Log.Info("the kernel exposes no data partition node; using a loop device over its byte range", "device", v.d.Path, "partition", DataPartition)
	out, err := a.Exec.Run(ctx, nil, "losetup", "--find", "--show", "--offset", strconv.FormatInt(v.data.Start, 10),
		"--sizelimit", strconv.FormatInt(v.data.Size, 10), real)
	if err != nil {
		return "", false, err
	}
	return strings.TrimSpace(string(out)), true, nil
}

func (a *Agent) detachLoop(ctx context.Context, dev string) {
	if _, err := a.Exec.Run(ctx, nil, "losetup", "--detach", dev); err != nil {
		a.Log.Warn("could not detach loop device", "device", dev, "err", err)
	}
}

// keyPipe returns the read end of a pipe holding the secret, written
// straight from locked memory: cryptsetup reads it with --key-file -, so
// the secret never touches a filesystem or a command line. The secret is
// far below the pipe's capacity, so the write never blocks.
func keyPipe(secret *secmem.Buffer) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	_, err = w.Write(secret.Bytes())
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("key pipe: %w", err)
	}
	return r, nil
}

// cryptsetup runs cryptsetup with the secret on stdin.
func (a *Agent) cryptsetup(ctx context.Context, secret *secmem.Buffer, args ...string) error {
	r, err := keyPipe(secret)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = a.Exec.Run(ctx, r, "cryptsetup", args...)
	return err
}

// testKeyslot proves the secret opens a keyslot of dev without mapping it.
func (a *Agent) testKeyslot(ctx context.Context, secret *secmem.Buffer, dev string) error {
	if err := a.cryptsetup(ctx, secret, "open", "--test-passphrase", "--key-file", "-", dev); err != nil {
		var te *ToolError
		if errors.As(err, &te) && te.ExitStatus() == 2 { // cryptsetup: 2 = no key available with this passphrase
			return fmt.Errorf("%w: no LUKS keyslot of %s opens with this volume's secret", ErrUnlock, dev)
		}
		return fmt.Errorf("%w: %w", ErrUnlock, err)
	}
	return nil
}

// haveDM reports whether device-mapper is usable (dm-crypt mappings):
// the control node opens. A node alone proves nothing (libdevmapper creates
// it even where the kernel has no device-mapper); opening it loads dm_mod
// where it is a module.
func (a *Agent) haveDM() error {
	ctl := a.DMControl
	if ctl == "" {
		ctl = "/dev/mapper/control"
	}
	f, err := os.OpenFile(ctl, os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return nil
	}
	if errors.Is(err, os.ErrNotExist) && a.DMControl == "" {
		if b, _ := os.ReadFile("/proc/misc"); strings.Contains(string(b), "device-mapper") {
			return nil // registered; cryptsetup creates the node
		}
	}
	return fmt.Errorf("%w: %s: %v; a LUKS volume cannot be mapped in this kernel or container (`sk-agent mount --check` verifies the secret against the keyslot without mapping)", ErrNoDM, ctl, err)
}
