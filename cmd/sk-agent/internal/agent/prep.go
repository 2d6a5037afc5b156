package agent

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/disk"
	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/secmem"
	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/store"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
)

// Filesystems prep-dev can create (the original's list, plus none: LUKS
// only, for a filesystem made later or where dm-crypt is unavailable).
var Filesystems = []string{"xfs", "ext2", "ext3", "ext4", "fat", "vfat", "none"}

// PrepOptions are prep-dev's options.
type PrepOptions struct {
	Device     string
	Filesystem string
	// Automount registers the volume for automount on this mount point and
	// mounts it.
	Automount string
	// DeleteAllExistingData allows preparing a device that is not empty.
	DeleteAllExistingData bool
	IgnoreNitroCheck      bool
	// PBKDF and PBKDFIterations pass --pbkdf and --pbkdf-force-iterations
	// to luksFormat. Both unset: DefaultPBKDF with DefaultPBKDFIterations.
	// PBKDF set alone: cryptsetup benchmarks its cost, as it does by
	// default.
	PBKDF           string
	PBKDFIterations int
}

// The keyslot KDF the agent asks for when none is given. The LUKS key is
// the 32-byte random secret itself, not a passphrase: key stretching adds
// no strength to 256 bits of entropy, only time and memory at every boot
// (measured in the VM test, docs/agent.md "VM test": cryptsetup's default
// argon2id makes luksFormat benchmark for ~20 s on a slow VM and every
// luksOpen spend its benchmarked time and up to half of the VM's memory).
// 1000 is the least iteration count cryptsetup accepts.
const (
	DefaultPBKDF           = "pbkdf2"
	DefaultPBKDFIterations = 1000
)

// kdfArgs returns luksFormat's KDF options.
func (o PrepOptions) kdfArgs() []string {
	pbkdf, iter := o.PBKDF, o.PBKDFIterations
	if pbkdf == "" && iter == 0 {
		pbkdf, iter = DefaultPBKDF, DefaultPBKDFIterations
	}
	var args []string
	if pbkdf != "" {
		args = append(args, "--pbkdf", pbkdf)
	}
	if iter > 0 {
		args = append(args, "--pbkdf-force-iterations", strconv.Itoa(iter))
	}
	return args
}

func blobOf(r store.Record) vsclient.SignedBlob {
	return vsclient.SignedBlob{EncryptedSecret: r.EncryptedSecret, Signature: r.Signature}
}

// PrepDev turns an empty block device into a sovkeys volume: GPT with the
// 1 MiB secret store (partition 128) and the LUKS2 data partition (1).
func (a *Agent) PrepDev(ctx context.Context, o PrepOptions) error {
	if !slices.Contains(Filesystems, o.Filesystem) {
		return usagef("filesystem %q: want one of %v", o.Filesystem, Filesystems)
	}
	if o.Automount != "" && o.Filesystem == "none" {
		return usagef("--automount needs a filesystem")
	}
	if err := a.checkPlatform(ctx, o.IgnoreNitroCheck); err != nil {
		return err
	}
	d, err := disk.Open(o.Device, false)
	if err != nil {
		return err
	}
	defer d.Close() // holds the lock until the volume is ready
	err = d.Lock(ctx, lockWait)
	if err == nil {
		err = d.CheckNotInUse(a.SysRoot, a.MountsFile)
	}
	if err == nil && !o.DeleteAllExistingData {
		if err = d.CheckEmpty(); err != nil {
			err = fmt.Errorf("%w; sovkeys prepares empty volumes only: if you are SURE, --delete-all-existing-data ERASES it", err)
		}
	}
	if err == nil && d.Size < (dataFirstLBA+2048+34)*512 {
		err = fmt.Errorf("%w: %s has %d bytes, too small for a sovkeys volume", ErrNotVolume, o.Device, d.Size)
	}
	if err != nil {
		return err
	}
	// Every tool is there before anything is destroyed.
	tools := []string{"sgdisk", "cryptsetup", "losetup"}
	if o.Filesystem != "none" {
		tools = append(tools, "mkfs."+mkfsName(o.Filesystem))
	}
	if _, ok := a.Exec.(SystemExec); ok {
		for _, tool := range tools {
			if _, err := toolPath(tool); err != nil {
				return fmt.Errorf("%w (Debian: cryptsetup, gdisk, xfsprogs, e2fsprogs, dosfstools)", err)
			}
		}
	}
	if o.Filesystem != "none" {
		if err := a.haveDM(); err != nil { // before anything is destroyed
			return fmt.Errorf("%w (--filesystem none prepares LUKS without a filesystem)", err)
		}
	}
	me, err := a.instance(ctx)
	if err != nil {
		return err
	}
	if a.DryRun {
		if o.DeleteAllExistingData {
			a.planned("ERASE the partition table of " + o.Device)
		}
		a.planned(fmt.Sprintf("create a GPT on %s: partition %d \"Secret Store\" (1 MiB), partition %d \"Data\" (the rest)", o.Device, StorePartition, DataPartition))
		a.planned(fmt.Sprintf("ask %s for a new secret as %s, store its encrypted form in partition %d", a.Cfg.URL, me, StorePartition))
		a.planned(fmt.Sprintf("LUKS2-format partition %d with the secret (filesystem: %s)", DataPartition, o.Filesystem))
		if o.Automount != "" {
			a.planned(fmt.Sprintf("register %s for automount on %s and mount it", o.Device, o.Automount))
		}
		return nil
	}
	if err := a.partition(ctx, o); err != nil {
		return err
	}
	v, err := a.openVolume(ctx, o.Device, true, false) // locked through d
	if err != nil {
		return err
	}
	defer v.Close()

	api, err := a.api(ctx)
	if err != nil {
		return err
	}
	var secret *secmem.Buffer
	var blob vsclient.SignedBlob
	if err := a.step("Asking the service for a new secret (signatures verified)", func() error {
		var raw []byte
		err := a.Cfg.Retry.call(ctx, a.Log, a.Sleep, string(vs.OpGenerate), func(ctx context.Context) error {
			var err error
			raw, blob, err = api.GenerateSecretSigned(ctx, me, v.volumeUUID)
			return err
		})
		if err != nil {
			return err
		}
		secret, err = secmem.From(raw)
		return err
	}); err != nil {
		return fmt.Errorf("%w (%s now holds an empty sovkeys layout and no data: rerun prep-dev with --delete-all-existing-data)", err, o.Device)
	}
	defer secret.Destroy()

	s := &store.Store{VolumeUUID: v.volumeUUID}
	s.Push(store.Record{InstanceID: me, EncryptedSecret: blob.EncryptedSecret, Signature: blob.Signature, Op: string(vs.OpGenerate), Time: a.Now().UTC()})
	if err := a.step("Storing the encrypted secret in the secret store", func() error {
		if err := store.Init(v.section(), s, v.d.Sync); err != nil {
			return err
		}
		back, err := store.Read(v.section(), v.sstore.Size)
		if err != nil || !bytes.Equal(back.Current().EncryptedSecret, blob.EncryptedSecret) {
			return fmt.Errorf("secret store does not read back: %v", err)
		}
		return nil
	}); err != nil {
		return err
	}

	dev, loop, err := a.dataDevice(ctx, v)
	if err != nil {
		return err
	}
	keepLoop := false
	defer func() {
		if loop && !keepLoop {
			a.detachLoop(ctx, dev)
		}
	}()
	if err := a.step(fmt.Sprintf("Formatting %s as LUKS2 with the secret", dev), func() error {
		args := append([]string{"luksFormat", "--type", "luks2", "--batch-mode", "--key-file", "-"}, o.kdfArgs()...)
		if err := a.cryptsetup(ctx, secret, append(args, dev)...); err != nil {
			return err
		}
		return a.testKeyslot(ctx, secret, dev)
	}); err != nil {
		return err
	}
	if o.Filesystem != "none" {
		if err := a.step("Creating the "+o.Filesystem+" filesystem inside LUKS", func() error { return a.mkfs(ctx, v, dev, secret, o.Filesystem) }); err != nil {
			return err
		}
	}
	if o.Automount != "" {
		if err := a.step("Registering "+o.Device+" for automount on "+o.Automount, func() error {
			return AddAutomount(a.Cfg.AutomountFile, Entry{Device: o.Device, MountPoint: o.Automount})
		}); err != nil {
			return err
		}
		if err := a.step("Mounting the encrypted data volume on "+o.Automount, func() error {
			return a.mapAndMount(ctx, v, dev, loop, secret, o.Automount)
		}); err != nil {
			return err
		}
		keepLoop = true
	}
	fmt.Fprintln(a.Out, "Success: volume", v.volumeUUID, "owned by", me)
	return nil
}

// partition writes the original's layout with sgdisk.
func (a *Agent) partition(ctx context.Context, o PrepOptions) error {
	return a.step("Creating the GPT (secret store + data partitions) on "+o.Device, func() error {
		if o.DeleteAllExistingData {
			if _, err := a.Exec.Run(ctx, nil, "sgdisk", "--zap-all", o.Device); err != nil {
				return err
			}
		}
		if _, err := a.Exec.Run(ctx, nil, "sgdisk", "-o",
			"-n", fmt.Sprintf("%d:%d:%d", StorePartition, storeFirstLBA, storeLastLBA), "-c", fmt.Sprintf("%d:Secret Store", StorePartition),
			"-A", fmt.Sprintf("%d:set:63", StorePartition),
			"-n", fmt.Sprintf("%d:%d:0", DataPartition, dataFirstLBA), "-c", fmt.Sprintf("%d:Data", DataPartition),
			o.Device); err != nil {
			return err
		}
		// Best effort: let the kernel see the new partitions.
		_, _ = a.Exec.Run(ctx, nil, "blockdev", "--rereadpt", o.Device)
		return nil
	})
}

// mkfs maps the LUKS volume, creates the filesystem and unmaps it.
func (a *Agent) mkfs(ctx context.Context, v *volume, dev string, secret *secmem.Buffer, fs string) error {
	name := v.mapperName()
	if err := a.cryptsetup(ctx, secret, "open", "--type", "luks", "--key-file", "-", dev, name); err != nil {
		return fmt.Errorf("%w: %w", ErrUnlock, err)
	}
	defer func() {
		if _, err := a.Exec.Run(ctx, nil, "cryptsetup", "close", name); err != nil {
			a.Log.Warn("could not close the LUKS mapping", "name", name, "err", err)
		}
	}()
	_, err := a.Exec.Run(ctx, nil, "mkfs", "-t", mkfsName(fs), "/dev/mapper/"+name)
	return err
}

// mkfsName is the mkfs type of a --filesystem value.
func mkfsName(fs string) string {
	if fs == "fat" {
		return "vfat"
	}
	return fs
}
