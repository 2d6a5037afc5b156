package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/disk"
	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/store"
)

// fast LUKS key derivation for tests: the secret is 32 random bytes, the
// KDF adds nothing, and argon2's default memory cost would dominate.
var fastKDF = []string{"--pbkdf", "pbkdf2", "--pbkdf-iterations", "1000"}

const diskSize = 48 << 20

// layout reads the GPT of an image as the agent sees it.
func layout(t *testing.T, img string) *disk.Table {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tbl, err := disk.ReadGPT(f, 512)
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// imgSection is partition p of an image file, for the attacker's edits.
func imgSection(t *testing.T, img string, p disk.Partition) (store.Section, func()) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	return store.Section{RW: f, Offset: p.Start, Size: p.Size}, func() { f.Close() }
}

type status struct {
	VolumeUUID    string `json:"volume_uuid"`
	StoreFormat   string `json:"store_format"`
	Owner         string `json:"owner_instance"`
	BlobSignature string `json:"blob_signature"`
	History       int    `json:"history"`
	ExitCode      int    `json:"exit_code"`
	Error         string `json:"error"`
}

func statusOf(t *testing.T, i *inst, dev string) status {
	t.Helper()
	r := i.agent(t, "status", dev)
	var s status
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &s); err != nil {
		t.Fatalf("status output: %v\n%s", err, r)
	}
	return s
}

// The whole life of a volume: prep-dev, a new agent process unlocks it
// (as after a reboot), another instance of the tenant takes it over and
// unlocks it; another tenant, the old owner and a tampered store are
// refused with clear errors; the keyslot opens with exactly the service's
// secret, which never shows up in any output.
func TestVolumeLifecycle(t *testing.T) {
	needDevices(t)
	ctx := context.Background()
	node.sovkeys(t, "tenant", "create", "--id", "vpc-a")
	node.sovkeys(t, "tenant", "create", "--id", "vpc-b")
	i1, i2 := enrol(t, "vpc-a", "i-0001"), enrol(t, "vpc-a", "i-0002")
	other := enrol(t, "vpc-b", "i-0009")
	dev, img := loopDisk(t, diskSize)

	want(t, i1.agent(t, "check-key"), 0, "Keys are identical")

	// --dry-run changes nothing.
	want(t, i1.agent(t, "prep-dev", "--dry-run", "--filesystem", "none", dev), 0, "dry-run: would create a GPT")
	if b, _ := os.ReadFile(img); !bytes.Equal(b[:1<<20], make([]byte, 1<<20)) {
		t.Fatal("--dry-run wrote to the device")
	}
	// Without dm-crypt, a filesystem cannot be made: refused before anything is written.
	// A missing mkfs is found before anything is written.
	if _, err := lookTool("mkfs.xfs"); err != nil {
		want(t, i1.agent(t, "prep-dev", dev), 2, "mkfs.xfs is not installed")
	}
	if !dmUsable() {
		want(t, i1.agent(t, "prep-dev", "-f", "ext4", dev), 9, "device-mapper")
		if b, _ := os.ReadFile(img); !bytes.Equal(b[:1<<20], make([]byte, 1<<20)) {
			t.Fatal("a refused prep-dev wrote to the device")
		}
		t.Log("dm-crypt is missing here: volumes are prepared with --filesystem none and unlocked with mount --check; mapping and mounting are not exercised")
	}

	prep := i1.agent(t, append([]string{"prep-dev", "--filesystem", "none", dev}, fastKDF...)...)
	want(t, prep, 0, "Success")
	tbl := layout(t, img)
	ss, data := tbl.Partitions[128], tbl.Partitions[1]
	if ss.Size != 1<<20 || ss.Name != "Secret Store" || data.Name != "Data" || data.Start != ss.Start+ss.Size {
		t.Fatalf("layout: %+v", tbl.Partitions)
	}
	if want := run(t, nil, "blkid", "-p", "-s", "PTUUID", "-o", "value", dev); tbl.DiskGUID != want {
		t.Fatalf("volume uuid %s, blkid PTUUID %s", tbl.DiskGUID, want)
	}
	st := statusOf(t, i1, dev)
	if st.StoreFormat != "sovkeys v1" || st.Owner != "i-0001" || st.BlobSignature != "valid" || st.VolumeUUID != tbl.DiskGUID {
		t.Fatalf("status %+v", st)
	}

	// The keyslot opens with exactly the service's secret, given the way
	// the original agent gives it (the raw bytes as key file): volumes stay
	// interchangeable. LUKS2 it is.
	sec, done := imgSection(t, img, ss)
	s, err := store.Read(sec, ss.Size)
	done()
	if err != nil {
		t.Fatal(err)
	}
	secret, err := i1.client.DecryptSecret(ctx, "i-0001", tbl.DiskGUID, s.Current().EncryptedSecret)
	if err != nil {
		t.Fatal(err)
	}
	p1 := partLoop(t, img, data.Start, data.Size)
	if v := run(t, nil, "cryptsetup", "luksDump", p1); !strings.Contains(strings.Join(strings.Fields(v), " "), "Version: 2") {
		t.Fatalf("not LUKS2: %s", v)
	}
	run(t, secret, "cryptsetup", "open", "--test-passphrase", "--key-file", "-", p1)
	run(t, nil, "losetup", "--detach", p1)

	// The secret never appears in what the agent prints or leaves behind.
	leaks := []string{string(secret), hex.EncodeToString(secret), base64.StdEncoding.EncodeToString(secret)}
	checkNoLeak := func(where, text string) {
		for _, l := range leaks {
			if strings.Contains(text, l) {
				t.Fatalf("the volume secret appears in %s", where)
			}
		}
	}
	checkNoLeak("prep-dev output", prep.stdout+prep.stderr)

	want(t, i1.agent(t, "prep-dev", "--filesystem", "none", dev), 4, "--delete-all-existing-data")

	// A new agent process (as after a reboot) unlocks the volume.
	r := i1.agent(t, "mount", "--check", dev)
	want(t, r, 0, "opens")
	checkNoLeak("mount output", r.stdout+r.stderr)
	if !dmUsable() {
		want(t, i1.agent(t, "mount", dev, filepath.Join(t.TempDir(), "mnt")), 9, "device-mapper")
	} else {
		mp := filepath.Join(t.TempDir(), "mnt")
		want(t, i1.agent(t, "mount", dev, mp), 9) // --filesystem none: nothing to mount
	}
	want(t, i1.agent(t, "mount", "--check", "--dry-run", dev), 0, "dry-run: would ask")

	// Another instance of the tenant is told to take ownership first.
	want(t, i2.agent(t, "mount", "--check", dev), 11, "takeown -i i-0001")
	// Another tenant cannot take it over: the service refuses, the store is unchanged.
	want(t, other.agent(t, "takeown", dev), 7, "convert")
	if st := statusOf(t, i1, dev); st.Owner != "i-0001" || st.History != 1 {
		t.Fatalf("a refused takeown changed the store: %+v", st)
	}
	// A volume of one tenant is not opened by an instance of another even
	// when that instance names itself owner in a forged store entry: the
	// signature covers only the blob, and the service refuses the blob.
	// (Here: the other tenant's instance asks for the real blob directly.)
	if _, err := other.client.DecryptSecret(ctx, "i-0009", tbl.DiskGUID, s.Current().EncryptedSecret); err == nil {
		t.Fatal("another tenant decrypted the volume secret")
	}

	// takeown by the second instance, then it unlocks the volume.
	want(t, i2.agent(t, "takeown", "--dry-run", dev), 0, "dry-run: would ask")
	want(t, i2.agent(t, "takeown", dev), 0, "now owned by i-0002")
	if st := statusOf(t, i2, dev); st.Owner != "i-0002" || st.History != 2 || st.BlobSignature != "valid" {
		t.Fatalf("after takeown: %+v", st)
	}
	want(t, i2.agent(t, "mount", "--check", dev), 0, "opens")
	want(t, i1.agent(t, "mount", "--check", dev), 11, "belongs to another instance")
	want(t, i2.agent(t, "takeown", dev), 0, "already owned")

	// Automount at boot, from the registered list.
	if err := os.WriteFile(filepath.Join(i2.dir, "automount.conf"), []byte("# test\n"+dev+":/mnt/sk-data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	want(t, i2.agent(t, "automount", "--check"), 0, "1 of 1 volumes done")
	// One volume failing does not stop the others; the exit code says which failure.
	blank, _ := loopDisk(t, diskSize)
	if err := os.WriteFile(filepath.Join(i2.dir, "automount.conf"), []byte(blank+":/mnt/sk-blank\n"+dev+":/mnt/sk-data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = i2.agent(t, "automount", "--check")
	want(t, r, 4, "1 of 2 volumes done", "opens", blank)
	if err := os.WriteFile(filepath.Join(i2.dir, "automount.conf"), []byte(dev+":/mnt/sk-data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A dry run checks what a real run needs, device-mapper included.
	if dmUsable() {
		want(t, i2.agent(t, "automount", "--dry-run"), 0, "would open partition 1")
	} else {
		want(t, i2.agent(t, "automount", "--dry-run"), 9, "device-mapper")
	}
	want(t, i2.agent(t, "automount", "--dry-run", "--check"), 0, "would test the secret")

	t.Run("tampered store", func(t *testing.T) { tamperedStore(t, i2, dev, img, ss) })
}

// tamperedStore: an attacker with the disk edits the secret store.
func tamperedStore(t *testing.T, i *inst, dev, img string, ss disk.Partition) {
	sec, done := imgSection(t, img, ss)
	defer done()
	orig := make([]byte, ss.Size)
	if _, err := sec.ReadAt(orig, 0); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if _, err := sec.WriteAt(orig, 0); err != nil {
			t.Fatal(err)
		}
	}
	defer restore()

	// 1. A flipped byte: the store's checksum catches it (both slots).
	for _, off := range []int64{0, 512 << 10} {
		b := make([]byte, 1)
		sec.ReadAt(b, off+200)
		b[0] ^= 0x55
		sec.WriteAt(b, off+200)
	}
	want(t, i.agent(t, "mount", "--check", dev), 10, "corrupt")
	restore()

	// 2. The blob changed and the checksum recomputed: the pinned-key
	// signature catches it before any call.
	s, err := store.Read(sec, ss.Size)
	if err != nil {
		t.Fatal(err)
	}
	s.Records[0].EncryptedSecret[len(s.Records[0].EncryptedSecret)-1] ^= 1
	if err := store.WriteV1(sec, s, nil); err != nil {
		t.Fatal(err)
	}
	want(t, i.agent(t, "mount", "--check", dev), 8, "not issued by the service")
	if st := statusOf(t, i, dev); st.BlobSignature != "invalid" || st.ExitCode != 8 {
		t.Fatalf("status of a tampered store: %+v", st)
	}

	// 3. The signature stripped as well: refused as corrupt.
	s.Records[0].Signature = nil
	if err := store.WriteV1(sec, s, nil); err != nil {
		t.Fatal(err)
	}
	want(t, i.agent(t, "mount", "--check", dev), 10, "no signature")
	restore()
	want(t, i.agent(t, "mount", "--check", dev), 0, "opens")
}
