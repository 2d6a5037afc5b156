package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The initramfs writer's archive lists back with busybox cpio: names,
// directories before their files, symlinks (no VM needed).
func TestWriteCpio(t *testing.T) {
	bb, err := busybox()
	if err != nil {
		t.Skip("busybox-static is not installed (make vm-deps)")
	}
	root := filepath.Join(t.TempDir(), "root")
	for _, d := range []string{"bin", "etc/sovkeys-agent"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(root, "init"), []byte("#!/bin/sh\n"))
	writeFile(t, filepath.Join(root, "etc/sovkeys-agent/x"), []byte("odd length!"))
	if err := os.Symlink("busybox", filepath.Join(root, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "i.gz")
	if err := writeCpio(root, out); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command("sh", "-c", "zcat "+out+" | "+bb+" cpio -t -v").CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, list)
	}
	for _, want := range []string{"bin/sh -> busybox", "etc/sovkeys-agent/x", "init", "drwxr-xr-x"} {
		if !strings.Contains(string(list), want) {
			t.Errorf("archive listing lacks %q:\n%s", want, list)
		}
	}
}
