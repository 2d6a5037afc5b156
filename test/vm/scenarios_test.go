package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const diskSize = 64 << 20 // LUKS2 reserves 16 MiB

// TestInstanceBoots boots VMs in sequence on the same data disk, as an
// instance's life goes: first boot prepares it, later boots unlock it
// through the automount path, with sovkeys down at boot, on another
// instance after a restore, with the kill switch engaged. Each boot's init
// prints one PASS/FAIL line per assertion; the host checks the disk
// images between boots.
func TestInstanceBoots(t *testing.T) {
	if shared.skip != "" {
		t.Skip(shared.skip)
	}
	n := shared.node
	n.cli(t, "tenant", "create", "--id", "vpc-vm")
	n.cli(t, "tenant", "create", "--id", "vpc-vm-other")
	a := enrol(t, "vpc-vm", "i-0vm00000000000a")
	sysA := a.systemDisk(t, "")
	data := sparseDisk(t, "data.img", diskSize)
	marker := "sovkeys-vm-plaintext-" + hex.EncodeToString(randBytes(t, 8))
	var figures []string

	ok := t.Run("first boot: prep-dev -a, write a file", func(t *testing.T) {
		none := sparseDisk(t, "none.img", diskSize)
		r := boot(t, vmSpec{scenario: "first", disks: []string{sysA, data, none}, params: map[string]string{"marker": marker}})
		r.passed(t, "prep-dev -f ext4", "file written", "umount --all", "not root (exit 5)", "(exit 9)")
		// The disk holds no plaintext and no secret.
		st, img := readStore(t, data)
		if bytes.Contains(img, []byte(marker)) {
			t.Error("the data disk holds the plaintext")
		}
		if st.Records[0].InstanceID != a.id {
			t.Errorf("store owner %q, want %q", st.Records[0].InstanceID, a.id)
		}
		secret, err := a.client.DecryptSecret(context.Background(), a.id, st.VolumeUUID, st.Records[0].EncryptedSecret)
		if err != nil {
			t.Fatalf("the stored blob does not decrypt for its owner: %v", err)
		}
		for _, enc := range [][]byte{secret, []byte(hex.EncodeToString(secret)), []byte(base64.StdEncoding.EncodeToString(secret))} {
			if bytes.Contains(img, enc) || strings.Contains(r.console, string(enc)) {
				t.Error("the secret is on the disk or in the console")
			}
		}
		if got := run(t, "debugfs", "-R", "cat /automount.conf", sysA); !strings.HasSuffix(got, "\n/dev/vdb:/mnt/data") {
			t.Errorf("automount file on the system disk: %q", got)
		}
		figures = append(figures, r.figures("first")...)
	})
	if !ok {
		t.Fatal("first boot failed: the later boots need its volume")
	}

	t.Run("second boot: automount", func(t *testing.T) {
		r := boot(t, vmSpec{scenario: "second", disks: []string{sysA, data}, params: map[string]string{"marker": marker}})
		r.passed(t, "automount (exit 0)", "file reads back")
		figures = append(figures, r.figures("second")...)
	})

	for _, f := range figures {
		t.Log(f)
	}
	if p := os.Getenv("SOVKEYS_VM_REPORT"); p != "" {
		writeFile(t, p, []byte(strings.Join(figures, "\n")+"\n"))
	}
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// figures describes the boot's timed agent runs.
func (r bootResult) figures(boot string) []string {
	var out []string
	for _, tl := range r.timelines() {
		last := tl.marks[len(tl.marks)-1].t
		line := fmt.Sprintf("%s: %s: %.1f s", boot, tl.what, last-tl.marks[0].t)
		if u, ok := tl.unlock(); ok {
			line = fmt.Sprintf("%s: %s: agent start → mounted %.1f s (local checks %.1f s, RSA key + service call %.1f s, luksOpen + mount %.1f s)",
				boot, tl.what, u.total, u.beforeCall, u.call, u.unlockMount)
		}
		out = append(out, line)
	}
	for k, v := range r.info {
		out = append(out, fmt.Sprintf("%s: %s %s", boot, k, v))
	}
	out = append(out, fmt.Sprintf("%s: whole boot (QEMU start to power off) %.0f s", boot, r.elapsed.Seconds()))
	return out
}

var _ = filepath.Join
var _ = time.Second
