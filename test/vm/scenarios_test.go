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
	var rows []namedTimeline // automount runs, for the chart
	keep := func(name string, r bootResult) {
		for _, tl := range r.timelines() {
			if _, ok := tl.unlock(); ok {
				rows = append(rows, namedTimeline{name, tl})
			}
		}
	}

	ok := t.Run("first boot: prep-dev -a, write a file", func(t *testing.T) {
		none := sparseDisk(t, "none.img", diskSize)
		r := boot(t, vmSpec{scenario: "first", disks: []string{sysA, data, none}, params: map[string]string{"marker": marker}})
		r.passed(t, "no command (exit 2)", "unknown option (exit 2)", "not root (exit 5)", "not a sovkeys volume (exit 4)",
			"check-key (exit 0)", "dry run writes nothing (exit 0)", "dry run left the disk empty",
			"prep-dev -f ext4 -a /mnt/data on an empty disk (exit 0)", "mounted on /mnt/data", "file written",
			"prep-dev again refused (exit 4)", "automount registered", "status names the owner", "umount --all (exit 0)",
			"nothing mounted after umount", "prep-dev -f none (exit 0)", "without a filesystem (exit 9)", "failed mount left no mapping")
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
		c0, s0 := n.gatewayTime(t, "vs.decrypt")
		r := boot(t, vmSpec{scenario: "second", disks: []string{sysA, data}, params: map[string]string{"marker": marker}})
		r.passed(t, "automount (exit 0)", "mounted on /mnt/data", "file reads back", "umount --all (exit 0)", "Nitro check on a VM whose board asset tag is not the instance id (exit 3)", "--ignore-nitro-check (exit 0)")
		figures = append(figures, r.figures("second")...)
		if c1, s1 := n.gatewayTime(t, "vs.decrypt"); c1 > c0 {
			figures = append(figures, fmt.Sprintf("second: service (gateway: request received → answer written) %.0f ms mean over %.0f decrypt-secret calls",
				(s1-s0)/(c1-c0)*1000, c1-c0))
		}
		keep("second boot", r)
	})

	t.Run("sovkeys down at boot, started 20 s later", func(t *testing.T) {
		n.stop()
		var started time.Time
		r := boot(t, vmSpec{scenario: "down", disks: []string{sysA, data}, params: map[string]string{"marker": marker},
			onMark: func(string) {
				time.Sleep(20 * time.Second)
				started = time.Now()
				if err := n.start(); err != nil {
					t.Errorf("restart the node: %v", err)
				}
			}})
		ensureNode(t)
		if started.IsZero() {
			t.Fatal("the boot never said the agent started: the node was not restarted during it")
		}
		r.passed(t, "bounded retries (exit 6)", "says the service did not answer", "automount while the service starts (exit 0)",
			"mounted on /mnt/data", "file reads back", "umount --all (exit 0)")
		figures = append(figures, r.figures("down")...)
	})

	b := enrol(t, "vpc-vm", "i-0vm00000000000b")
	sysB := b.systemDisk(t, "/dev/vdb:/mnt/data")
	t.Run("another instance of the tenant: exit 11 until takeown", func(t *testing.T) {
		r := boot(t, vmSpec{scenario: "other", disks: []string{sysB, data}, params: map[string]string{"marker": marker, "source": a.id}})
		r.passed(t, "another instance's volume (exit 11)", "says takeown", "nothing mounted", "takeown (exit 0)",
			"automount after takeown (exit 0)", "file reads back", "umount --all (exit 0)")
		if st, _ := readStore(t, data); st.Records[0].InstanceID != b.id {
			t.Errorf("store owner after takeown %q, want %q", st.Records[0].InstanceID, b.id)
		}
		figures = append(figures, r.figures("other")...)
		keep("after takeown", r)
	})

	t.Run("another tenant, a tampered store, a corrupt store: refused", func(t *testing.T) {
		c := enrol(t, "vpc-vm-other", "i-0vm00000000000c")
		sysC := c.systemDisk(t, "")
		dir := scratch(t)
		tampered, corrupt := filepath.Join(dir, "tampered.img"), filepath.Join(dir, "corrupt.img")
		tamperStore(t, data, tampered)
		corruptStore(t, data, corrupt)
		r := boot(t, vmSpec{scenario: "tenant", disks: []string{sysC, data, tampered, corrupt}, params: map[string]string{"source": b.id}})
		r.passed(t, "another instance (exit 11)", "another tenant refused (exit 7)", "nothing mounted", "before any call (exit 8)", "corrupt store refused (exit 10)")
		if st, _ := readStore(t, data); st.Records[0].InstanceID != b.id {
			t.Errorf("store owner changed to %q by a refused takeown", st.Records[0].InstanceID)
		}
	})

	t.Run("kill switch engaged: nothing mounted", func(t *testing.T) {
		const reason = "vm-test-instance-compromise"
		n.cli(t, "killswitch", "engage", "--tenant", "vpc-vm", "--reason", reason)
		defer n.cli(t, "killswitch", "release", "--tenant", "vpc-vm")
		r := boot(t, vmSpec{scenario: "killswitch", disks: []string{sysB, data}})
		r.passed(t, "kill switch engaged (exit 7)", "says why", "nothing mounted")
		if !strings.Contains(r.console, reason) {
			t.Errorf("the boot does not show the operator's reason %q", reason)
		}
	})

	t.Run("a volume made the original Sovereign Keys way", func(t *testing.T) {
		orig, key := originalVolume(t, a)
		r := boot(t, vmSpec{scenario: "original", disks: []string{sysA, data, orig, key}, params: map[string]string{"marker": marker}, assetTag: a.id})
		r.passed(t, "original volume made", "asset tag is the instance id (exit 0)", "status of an original volume (exit 0)",
			"status says original", "mount of an original volume (exit 0)", "file reads back", "umount (exit 0)")
		figures = append(figures, r.figures("original")...)
		keep("original volume", r)
	})

	for _, f := range figures {
		t.Log(f)
	}
	if p := os.Getenv("SOVKEYS_VM_REPORT"); p != "" {
		writeFile(t, p, []byte(strings.Join(figures, "\n")+"\n"))
	}
	if p := os.Getenv("SOVKEYS_VM_CHART"); p != "" && len(rows) > 0 {
		if err := timelineChart(p, rows); err != nil {
			t.Error(err)
		}
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

// ensureNode restarts the node if a failed scenario left it stopped.
func ensureNode(t *testing.T) {
	t.Helper()
	n := shared.node
	n.mu.Lock()
	running := n.cmd != nil
	n.mu.Unlock()
	if !running {
		if err := n.start(); err != nil {
			t.Fatalf("restart the node: %v", err)
		}
	}
}

// originalVolume prepares a disk as the original agent's sk-prep-dev did
// (sgdisk layout, a FAT secret store holding encrypted_secret.bin, LUKS
// keyed with the raw secret as key file), up to its filesystem step, which
// needs device-mapper: the guest does that one (init.sh "original"), with
// the raw secret handed over on a disk of its own (key).
func originalVolume(t *testing.T, owner *instance) (img, key string) {
	t.Helper()
	img = sparseDisk(t, "original.img", diskSize)
	run(t, "sgdisk", "-o", img)
	run(t, "sgdisk", "-n", "128:2048:4095", "-c", "128:Secret Store", img)
	run(t, "sgdisk", "-n", "1:4096:0", "-c", "1:Data", img)
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	uuid, err := diskGUID(raw)
	if err != nil {
		t.Fatal(err)
	}
	secret, blob, err := owner.client.GenerateSecretSigned(context.Background(), owner.id, uuid)
	if err != nil {
		t.Fatal(err)
	}
	dir := scratch(t)
	blobFile, storeFile, dataFile := filepath.Join(dir, "encrypted_secret.bin"), filepath.Join(dir, "store.fat"), filepath.Join(dir, "data.luks")
	writeFile(t, blobFile, blob.EncryptedSecret)
	run(t, "mkfs.fat", "-C", storeFile, "1024")
	run(t, "mcopy", "-i", storeFile, blobFile, "::encrypted_secret.bin")
	start, size, err := partition(raw, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dataFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dataFile, size); err != nil {
		t.Fatal(err)
	}
	// LUKS1 with PBKDF2, as the original made volumes on Amazon Linux 2.
	runIn(t, secret, "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf-force-iterations", "1000", "--key-file", "-", dataFile)
	st, err := os.ReadFile(storeFile)
	if err != nil {
		t.Fatal(err)
	}
	copy(raw[storeStart:], st)
	hdr, err := os.ReadFile(dataFile)
	if err != nil {
		t.Fatal(err)
	}
	copy(raw[start:start+size], hdr)
	writeFile(t, img, raw)
	key = filepath.Join(dir, "key.img")
	writeFile(t, key, append(bytes.Clone(secret), make([]byte, 4096-len(secret))...))
	return img, key
}
