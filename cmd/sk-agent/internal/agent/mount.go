package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/secmem"
	"github.com/sovkeys/sovkeys/shared/api/vs"
)

// MountOptions are mount's options.
type MountOptions struct {
	Device, MountPoint string
	// Check proves the secret opens the LUKS keyslot and maps nothing
	// (works without device-mapper).
	Check            bool
	IgnoreNitroCheck bool
}

// Mount asks the service to decrypt the volume's secret, opens the LUKS
// data partition with it and mounts it (or, with Check, only proves the
// keyslot opens).
func (a *Agent) Mount(ctx context.Context, o MountOptions) error {
	if o.Device == "" || (!o.Check && o.MountPoint == "") {
		return usagef("mount needs DEVICE and MOUNT_POINT (or --check DEVICE)")
	}
	if !o.Check && !filepath.IsAbs(o.MountPoint) {
		return usagef("mount point %q must be an absolute path", o.MountPoint)
	}
	if err := a.checkPlatform(ctx, o.IgnoreNitroCheck); err != nil {
		return err
	}
	v, err := a.openVolume(ctx, o.Device, false, true)
	if err != nil {
		return err
	}
	defer v.Close()
	s, err := a.readStore(ctx, v)
	if err != nil {
		return err
	}
	if err := a.step("Verifying the stored blob's signature (pinned key)", func() error { return a.verifyStored(ctx, s) }); err != nil {
		return err
	}
	if err := a.checkOwner(ctx, s); err != nil {
		return err
	}
	if !o.Check {
		if mp, ok := a.mountedAt(v.mapperName()); ok {
			if filepath.Clean(mp) == filepath.Clean(o.MountPoint) {
				fmt.Fprintln(a.Out, o.Device, "is already mounted on", mp)
				return nil
			}
			return fmt.Errorf("%w: %s is already mounted on %s", ErrUnlock, o.Device, mp)
		}
		if err := a.haveDM(); err != nil {
			return err
		}
	}
	me, err := a.instance(ctx)
	if err != nil {
		return err
	}
	if a.DryRun {
		a.planned(fmt.Sprintf("ask %s to decrypt the secret of volume %s as %s (store: %s)", a.Cfg.URL, v.volumeUUID, me, s.Format))
		if o.Check {
			a.planned(fmt.Sprintf("test the secret against the LUKS keyslots of partition %d of %s", DataPartition, o.Device))
		} else {
			a.planned(fmt.Sprintf("open partition %d of %s as /dev/mapper/%s and mount it on %s", DataPartition, o.Device, v.mapperName(), o.MountPoint))
		}
		return nil
	}
	secret, err := a.decrypt(ctx, me, v.volumeUUID, s.Current().EncryptedSecret)
	if err != nil {
		return err
	}
	defer secret.Destroy()
	dev, loop, err := a.dataDevice(ctx, v)
	if err != nil {
		return err
	}
	if o.Check {
		defer func() {
			if loop {
				a.detachLoop(ctx, dev)
			}
		}()
		if err := a.step("Testing the secret against the LUKS keyslot of "+dev, func() error { return a.testKeyslot(ctx, secret, dev) }); err != nil {
			return err
		}
		fmt.Fprintln(a.Out, "Success: the secret of volume", v.volumeUUID, "opens", o.Device, "(nothing mapped: --check)")
		return nil
	}
	if err := a.step("Mounting the encrypted data volume on "+o.MountPoint, func() error {
		return a.mapAndMount(ctx, v, dev, loop, secret, o.MountPoint)
	}); err != nil {
		if loop {
			a.detachLoop(ctx, dev)
		}
		return err
	}
	fmt.Fprintln(a.Out, "Success:", o.Device, "mounted on", o.MountPoint)
	return nil
}

// decrypt runs decrypt-secret with retries and moves the secret to locked
// memory.
func (a *Agent) decrypt(ctx context.Context, me, volumeUUID string, blob []byte) (*secmem.Buffer, error) {
	api, err := a.api(ctx)
	if err != nil {
		return nil, err
	}
	var secret *secmem.Buffer
	err = a.step("Asking the service to decrypt the secret (signature verified)", func() error {
		var raw []byte
		err := a.Cfg.Retry.call(ctx, a.Log, a.Sleep, string(vs.OpDecrypt), func(ctx context.Context) error {
			var err error
			raw, err = api.DecryptSecret(ctx, me, volumeUUID, blob)
			return err
		})
		if err != nil {
			return err
		}
		secret, err = secmem.From(raw)
		return err
	})
	return secret, err
}

// mapAndMount opens the LUKS mapping and mounts it; on failure it closes
// the mapping again.
func (a *Agent) mapAndMount(ctx context.Context, v *volume, dev string, loop bool, secret *secmem.Buffer, mp string) error {
	if err := a.haveDM(); err != nil {
		return err
	}
	name := v.mapperName()
	if err := a.cryptsetup(ctx, secret, "open", "--type", "luks", "--key-file", "-", dev, name); err != nil {
		return fmt.Errorf("%w: %w", ErrUnlock, err)
	}
	if err := os.MkdirAll(mp, 0o755); err != nil {
		a.closeMapping(ctx, name)
		return err
	}
	if _, err := a.Exec.Run(ctx, nil, "mount", "/dev/mapper/"+name, mp); err != nil {
		a.closeMapping(ctx, name)
		return fmt.Errorf("%w: %w", ErrUnlock, err)
	}
	if loop { // remember the loop device so that umount detaches it
		if err := os.MkdirAll(a.Cfg.RunDir, 0o700); err == nil {
			_ = os.WriteFile(filepath.Join(a.Cfg.RunDir, name+".loop"), []byte(dev+"\n"), 0o600)
		}
	}
	return nil
}

func (a *Agent) closeMapping(ctx context.Context, name string) {
	if _, err := a.Exec.Run(ctx, nil, "cryptsetup", "close", name); err != nil {
		a.Log.Warn("could not close the LUKS mapping", "name", name, "err", err)
	}
}

// mount is one line of the mount table.
type mount struct{ source, target string }

func (a *Agent) mounts() []mount {
	f, err := os.Open(a.MountsFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 {
			out = append(out, mount{source: unescapeMount(fs[0]), target: unescapeMount(fs[1])})
		}
	}
	return out
}

// unescapeMount undoes the octal escapes of /proc/mounts (\040 = space).
func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// mapperOf returns the device-mapper name of a mount source.
func (a *Agent) mapperOf(source string) string {
	if n, ok := strings.CutPrefix(source, "/dev/mapper/"); ok {
		return n
	}
	if base := filepath.Base(source); strings.HasPrefix(base, "dm-") {
		b, err := os.ReadFile(filepath.Join(a.SysRoot, "block", base, "dm", "name"))
		if err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	return ""
}

// mountedAt returns where the mapping name is mounted.
func (a *Agent) mountedAt(name string) (string, bool) {
	for _, m := range a.mounts() {
		if a.mapperOf(m.source) == name {
			return m.target, true
		}
	}
	return "", false
}

// UmountOptions are umount's options.
type UmountOptions struct {
	// Target is a mount point or a sovkeys device.
	Target string
	// All unmounts every automount entry.
	All bool
}

// Umount unmounts a sovkeys volume and closes its LUKS mapping.
func (a *Agent) Umount(ctx context.Context, o UmountOptions) error {
	if o.All {
		entries, err := ReadAutomount(a.Cfg.AutomountFile)
		if err != nil {
			return err
		}
		var errs []error
		for _, e := range entries {
			if _, ok := a.mountTargetOf(e.MountPoint); !ok {
				continue
			}
			if err := a.Umount(ctx, UmountOptions{Target: e.MountPoint}); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", e.MountPoint, err))
			}
		}
		return errors.Join(errs...)
	}
	if o.Target == "" {
		return usagef("umount needs a MOUNT_POINT or DEVICE (or --all)")
	}
	mp, ok := a.mountTargetOf(o.Target)
	var name string
	if ok {
		for _, m := range a.mounts() {
			if m.target == mp {
				name = a.mapperOf(m.source)
			}
		}
	} else if v, err := a.openVolume(ctx, o.Target, false, false); err == nil {
		name = v.mapperName()
		v.Close()
		mp, ok = a.mountedAt(name)
	}
	if name == "" || !a.isLUKSMapping(ctx, name) {
		return fmt.Errorf("%w: %s is not a mounted sovkeys (LUKS) volume", ErrNotVolume, o.Target)
	}
	if a.DryRun {
		if ok {
			a.planned("unmount " + mp)
		}
		a.planned("close /dev/mapper/" + name)
		return nil
	}
	if ok {
		if err := a.step("Unmounting "+mp, func() error { _, err := a.Exec.Run(ctx, nil, "umount", mp); return err }); err != nil {
			return err
		}
	}
	if err := a.step("Closing /dev/mapper/"+name, func() error { _, err := a.Exec.Run(ctx, nil, "cryptsetup", "close", name); return err }); err != nil {
		return err
	}
	state := filepath.Join(a.Cfg.RunDir, name+".loop")
	if b, err := os.ReadFile(state); err == nil {
		a.detachLoop(ctx, strings.TrimSpace(string(b)))
		_ = os.Remove(state)
	}
	return nil
}

// mountTargetOf returns the mount point when target is one.
func (a *Agent) mountTargetOf(target string) (string, bool) {
	clean := filepath.Clean(target)
	for _, m := range a.mounts() {
		if m.target == clean {
			return clean, true
		}
	}
	return "", false
}

// isLUKSMapping reports whether name is an active LUKS mapping: sk-agent's
// (sk-<uuid>) or the original agent's (a random name), never, say, an LVM
// volume that happens to be mounted on the target.
func (a *Agent) isLUKSMapping(ctx context.Context, name string) bool {
	out, err := a.Exec.Run(ctx, nil, "cryptsetup", "status", name)
	return err == nil && strings.Contains(string(out), "type:") && strings.Contains(string(out), "LUKS")
}
