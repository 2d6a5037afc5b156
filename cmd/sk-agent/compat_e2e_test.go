package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A volume made the original Sovereign Keys agent's way (sgdisk layout,
// mkfs.fat secret store holding encrypted_secret.bin, LUKS keyed with the
// raw secret as key file) mounts with sk-agent; takeown rewrites the FAT
// file in place, so the original agent (here: mtools) reads the new blob,
// which the new owner decrypts to the same secret. A tampered blob in such
// a store (no signature to check locally) is refused by the service.
func TestOriginalVolume(t *testing.T) {
	needDevices(t)
	for _, tool := range []string{"mkfs.fat", "mcopy", "mtype", "blkid"} {
		if _, err := lookTool(tool); err != nil {
			t.Skipf("%s is not installed (dosfstools, mtools): %v", tool, err)
		}
	}
	ctx := context.Background()
	node.sovkeys(t, "tenant", "create", "--id", "vpc-orig")
	i1, i2 := enrol(t, "vpc-orig", "i-0101"), enrol(t, "vpc-orig", "i-0102")
	dev, img := loopDisk(t, diskSize)

	// The original sk-prep-dev, step by step.
	run(t, nil, "sgdisk", "-o", dev)
	run(t, nil, "sgdisk", "-n", "128:2048:4095", "-c", "128:Secret Store", dev)
	run(t, nil, "sgdisk", "-n", "1:4096:0", "-c", "1:Data", dev)
	uuid := run(t, nil, "blkid", "-p", "-s", "PTUUID", "-o", "value", dev)
	tbl := layout(t, img)
	ss, data := tbl.Partitions[128], tbl.Partitions[1]
	storeDev := partLoop(t, img, ss.Start, ss.Size)
	run(t, nil, "mkfs.fat", storeDev)
	secret, blob, err := i1.client.GenerateSecretSigned(ctx, "i-0101", uuid)
	if err != nil {
		t.Fatal(err)
	}
	blobFile := filepath.Join(t.TempDir(), "encrypted_secret.bin")
	if err := os.WriteFile(blobFile, blob.EncryptedSecret, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, "mcopy", "-i", storeDev, blobFile, "::encrypted_secret.bin")
	dataDev := partLoop(t, img, data.Start, data.Size)
	run(t, secret, "cryptsetup", "luksFormat", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-", dataDev)
	run(t, nil, "losetup", "--detach", dataDev)

	st := statusOf(t, i1, dev)
	if st.StoreFormat != "original (FAT, encrypted_secret.bin)" || st.BlobSignature != "absent" || st.VolumeUUID != uuid {
		t.Fatalf("status %+v", st)
	}
	want(t, i1.agent(t, "mount", "--check", dev), 0, "opens")

	// Tampered blob: nothing to check locally; the service refuses it.
	bad := bytes.Clone(blob.EncryptedSecret)
	bad[len(bad)/2] ^= 1
	if err := os.WriteFile(blobFile, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, "mcopy", "-o", "-i", storeDev, blobFile, "::encrypted_secret.bin")
	want(t, i1.agent(t, "mount", "--check", dev), 7, "decrypt-secret")
	if err := os.WriteFile(blobFile, blob.EncryptedSecret, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, "mcopy", "-o", "-i", storeDev, blobFile, "::encrypted_secret.bin")

	// The original store records no owner: takeown needs -i.
	want(t, i2.agent(t, "takeown", dev), 2, "-i")
	want(t, i2.agent(t, "takeown", "-i", "i-0101", dev), 0, "now owned by i-0102")
	newBlob := []byte(run(t, nil, "mtype", "-i", storeDev, "::encrypted_secret.bin"))
	got, err := i2.client.DecryptSecret(ctx, "i-0102", uuid, mtypeRaw(t, storeDev))
	if err != nil || !bytes.Equal(got, secret) || len(newBlob) == 0 {
		t.Fatalf("the rewritten original store does not decrypt for the new owner: %v", err)
	}
	want(t, i2.agent(t, "mount", "--check", dev), 0, "opens")
	want(t, i1.agent(t, "mount", "--check", dev), 7) // the old owner's blob is gone
}

// mtypeRaw reads encrypted_secret.bin as the original agent would.
func mtypeRaw(t *testing.T, storeDev string) []byte {
	t.Helper()
	p, err := lookTool("mtype")
	if err != nil {
		t.Fatal(err)
	}
	out, err := execOutput(p, "-i", storeDev, "::encrypted_secret.bin")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Refusals that need no volume: an unreachable service (bounded retries,
// exit 6), a wrong pinned key (exit 8), and a store signed under another
// key than the pinned one (exit 8, before any call).
func TestRefusals(t *testing.T) {
	needDevices(t)
	node.sovkeys(t, "tenant", "create", "--id", "vpc-ref")
	i := enrol(t, "vpc-ref", "i-0201")
	dev, _ := loopDisk(t, diskSize)
	want(t, i.agent(t, append([]string{"prep-dev", "--filesystem", "none", dev}, fastKDF...)...), 0, "Success")

	// Unreachable: a closed loopback port, 3 attempts 50ms apart.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	down := *i
	down.conf = filepath.Join(t.TempDir(), "down.conf")
	writeConf(t, &down, "url = https://"+closed)
	want(t, down.agent(t, "mount", "--check", dev), 6, "no answer after 3 attempts")

	// A pinned key that is not the service's.
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	wrongKey := filepath.Join(t.TempDir(), "wrong.pem")
	if err := os.WriteFile(wrongKey, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	wrong := *i
	wrong.conf = filepath.Join(t.TempDir(), "wrong.conf")
	writeConf(t, &wrong, "signing_key = "+wrongKey)
	want(t, wrong.agent(t, "check-key"), 8, "Keys DIFFER")
	want(t, wrong.agent(t, "mount", "--check", dev), 8, "not issued by the service")
	want(t, wrong.agent(t, "takeown", "-i", "i-0200", dev), 8)

	// Another process working on the volume (holding the device lock, as
	// another sk-agent run does) makes the agent wait, then refuse.
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	want(t, i.agent(t, "takeown", "-i", "i-0200", dev), 4, "holds a lock")
	f.Close()

	// Not a sovkeys volume; a path that is not a block device.
	blank, _ := loopDisk(t, diskSize)
	want(t, i.agent(t, "mount", "--check", blank), 4, "prep-dev")
	want(t, i.agent(t, "status", blank), 4)
	want(t, i.agent(t, "prep-dev", "--filesystem", "none", i.conf), 4, "not a block device")
}

// --delete-all-existing-data re-prepares a volume: a new GPT (new volume
// uuid), a new secret; the old blob is gone.
func TestDeleteAllExistingData(t *testing.T) {
	needDevices(t)
	node.sovkeys(t, "tenant", "create", "--id", "vpc-del")
	i := enrol(t, "vpc-del", "i-0301")
	dev, _ := loopDisk(t, diskSize)
	want(t, i.agent(t, append([]string{"prep-dev", "--filesystem", "none", dev}, fastKDF...)...), 0, "Success")
	before := statusOf(t, i, dev)
	want(t, i.agent(t, append([]string{"prep-dev", "--filesystem", "none", dev}, fastKDF...)...), 4, "--delete-all-existing-data")
	want(t, i.agent(t, "prep-dev", "--dry-run", "--delete-all-existing-data", "--filesystem", "none", dev), 0, "would ERASE")
	want(t, i.agent(t, append([]string{"prep-dev", dev, "--filesystem", "none", "--delete-all-existing-data"}, fastKDF...)...), 0, "Success")
	after := statusOf(t, i, dev)
	if after.VolumeUUID == before.VolumeUUID || after.History != 1 || after.BlobSignature != "valid" {
		t.Fatalf("before %+v after %+v", before, after)
	}
	want(t, i.agent(t, "mount", "--check", dev), 0, "opens")
}
