package vm

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// The guest's initramfs: busybox, cryptsetup and the other tools sk-agent
// calls (dynamic, with the libraries and loader ldd names), the modules of
// Debian's kernel package that the boot needs (with their dependencies,
// modules.dep made by busybox depmod), the static sk-agent and
// sk-vmguest, and /init (testdata/init.sh). Instance identities are not in
// it: they are on each instance's system disk.

// guestModules are loaded in this order by /init; their dependencies come
// along (modprobe resolves them from modules.dep).
var guestModules = []string{
	"virtio_pci", "virtio_blk", "virtio_console", // disks, serial port
	"crc32c_intel", "crc32c_generic", "ext4", // filesystem (ext4 wants crc32c)
	"dm_mod", "dm_crypt", "xts", "aesni_intel", // LUKS2 aes-xts-plain64
	"af_alg", "algif_skcipher", "algif_hash", // cryptsetup's kernel crypto API use
}

// guestTools are host binaries copied into the guest with their libraries.
var guestTools = []string{"cryptsetup", "sgdisk", "mke2fs", "mkfs", "losetup", "blockdev"}

type kernel struct {
	vmlinuz, modules, version string
}

// unpackKernel unpacks the kernel package (dpkg-deb -x, no install) into
// cache once and returns its parts.
func unpackKernel(deb, cache string) (kernel, error) {
	dir := filepath.Join(cache, strings.TrimSuffix(filepath.Base(deb), ".deb"))
	if _, err := os.Stat(filepath.Join(dir, ".unpacked")); err != nil {
		_ = os.RemoveAll(dir)
		if out, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
			return kernel{}, fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, out)
		}
		if err := os.WriteFile(filepath.Join(dir, ".unpacked"), nil, 0o644); err != nil {
			return kernel{}, err
		}
	}
	vms, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(vms) != 1 {
		return kernel{}, fmt.Errorf("%s holds %d kernels", deb, len(vms))
	}
	ver := strings.TrimPrefix(filepath.Base(vms[0]), "vmlinuz-")
	mods := filepath.Join(dir, "lib", "modules", ver)
	if _, err := os.Stat(mods); err != nil {
		return kernel{}, err
	}
	return kernel{vmlinuz: vms[0], modules: mods, version: ver}, nil
}

// moduleIndex maps module names (underscores) to their .ko files.
func moduleIndex(dir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			idx[strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko"), "-", "_")] = p
		}
		return nil
	})
	return idx, err
}

// moduleDeps reads the depends= field of a module's .modinfo section.
func moduleDeps(ko string) ([]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("%s: no .modinfo", ko)
	}
	b, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// libraries returns the shared objects (and the loader) a binary needs,
// as ldd lists them.
func libraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %v", bin, err)
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

// initramfsInputs are the files the builder needs from the test's setup.
type initramfsInputs struct {
	kernel         kernel
	busybox        string
	agent, vmguest string // static binaries
	initScript     string
}

// buildInitramfs stages the guest's root in dir/root and writes
// dir/initramfs.gz.
func buildInitramfs(in initramfsInputs, dir string) (string, error) {
	root := filepath.Join(dir, "root")
	put := func(src, dst string, mode os.FileMode) error {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		p := filepath.Join(root, dst)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, b, mode)
	}
	for _, f := range []struct {
		src, dst string
	}{
		{in.busybox, "bin/busybox"}, {in.initScript, "init"},
		{in.agent, "usr/local/sbin/sk-agent"}, {in.vmguest, "usr/local/bin/sk-vmguest"},
	} {
		if err := put(f.src, f.dst, 0o755); err != nil {
			return "", err
		}
	}
	// /init's interpreter.
	if err := os.Symlink("busybox", filepath.Join(root, "bin/sh")); err != nil {
		return "", err
	}
	libs := map[string]bool{}
	for _, tool := range guestTools {
		p, err := lookTool(tool)
		if err != nil {
			return "", err
		}
		if err := put(p, filepath.Join("usr/sbin", tool), 0o755); err != nil {
			return "", err
		}
		ls, err := libraries(p)
		if err != nil {
			return "", err
		}
		for _, l := range ls {
			libs[l] = true
		}
	}
	// mkfs -t ext4 runs mkfs.ext4, which is mke2fs.
	if err := os.Symlink("mke2fs", filepath.Join(root, "usr/sbin/mkfs.ext4")); err != nil {
		return "", err
	}
	for l := range libs {
		if err := put(l, l, 0o755); err != nil {
			return "", err
		}
	}
	if _, err := os.Stat("/etc/mke2fs.conf"); err == nil {
		if err := put("/etc/mke2fs.conf", "etc/mke2fs.conf", 0o644); err != nil {
			return "", err
		}
	}

	// Modules and their dependencies.
	idx, err := moduleIndex(in.kernel.modules)
	if err != nil {
		return "", err
	}
	want, seen := append([]string(nil), guestModules...), map[string]bool{}
	var load []string
	for len(want) > 0 {
		m := want[0]
		want = want[1:]
		if seen[m] {
			continue
		}
		seen[m] = true
		ko, ok := idx[m]
		if !ok {
			continue // built into the kernel
		}
		if contains(guestModules, m) {
			load = append(load, m)
		}
		deps, err := moduleDeps(ko)
		if err != nil {
			return "", err
		}
		want = append(want, deps...)
		rel, _ := filepath.Rel(in.kernel.modules, ko)
		if err := put(ko, filepath.Join("lib/modules", in.kernel.version, rel), 0o644); err != nil {
			return "", err
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin"} {
		if err := put(filepath.Join(in.kernel.modules, f), filepath.Join("lib/modules", in.kernel.version, f), 0o644); err != nil {
			return "", err
		}
	}
	if out, err := exec.Command(in.busybox, "depmod", "-b", root, in.kernel.version).CombinedOutput(); err != nil {
		return "", fmt.Errorf("busybox depmod: %v: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/vm-modules"), []byte(strings.Join(load, "\n")+"\n"), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "initramfs.gz")
	return out, writeCpio(root, out)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// writeCpio writes the tree under root as a gzipped cpio archive in the
// "newc" format the kernel unpacks into its initial rootfs.
func writeCpio(root, out string) error {
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths) // parents before children
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	w := &cpioWriter{w: zw}
	for i, p := range paths {
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		var data []byte
		var mode uint32
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			data, mode = []byte(t), 0o120777
		case fi.IsDir():
			mode = 0o040000 | uint32(fi.Mode().Perm())
		default:
			if data, err = os.ReadFile(p); err != nil {
				return err
			}
			mode = 0o100000 | uint32(fi.Mode().Perm())
		}
		w.entry(uint32(i+1), rel, mode, data)
	}
	w.entry(0, "TRAILER!!!", 0, nil)
	if w.err != nil {
		return w.err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Close()
}

type cpioWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) entry(ino uint32, name string, mode uint32, data []byte) {
	nlink := uint32(1)
	if mode&0o040000 != 0 {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check
	c.write([]byte(fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
}
