package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/client/xksclient"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// TestClusterDisasterRecovery is the disaster-recovery drill on a 3-node
// cluster that loses all three nodes (docs/operations.md, "Disaster
// recovery"): keys rotated twice and ciphertexts under each version; the
// keys exported, the mesh backed up online; every NATS node's data and the
// HSM token deleted; a new token gets the keys, the new cluster the backup
// (before `sovkeys init`); every old ciphertext decrypts and the key store's
// audit log verifies as one log.
func TestClusterDisasterRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node cluster twice")
	}
	d := startDeployment(t)
	ctx := context.Background()
	var ks struct {
		URIPrefix       string `json:"uriPrefix"`
		AccessKeyID     string `json:"accessKeyId"`
		SecretAccessKey string `json:"secretAccessKey"`
	}
	d.cli(t, &ks, "xks", "keystore", "create", "--prefix", "/dr", "--replicas", "3")
	d.cli(t, nil, "xks", "key", "create", "--keystore", "/dr", "--id", "rk", "--replicas", "3")
	hc := httpsClient(t, d.caFile, 10*time.Second)
	c := &xksclient.Client{BaseURL: "https://" + d.gateways[0], Prefix: ks.URIPrefix, AccessKeyID: ks.AccessKeyID, Secret: ks.SecretAccessKey, HTTP: hc}
	pt, aad := []byte("cluster disaster recovery"), []byte("aad")
	var cts []*xks.EncryptResponse
	for v := 1; v <= 3; v++ {
		if v > 1 {
			d.cli(t, nil, "xks", "key", "rotate", "--keystore", "/dr", "--id", "rk")
		}
		testkit.CheckFor(t, 60*time.Second, 250*time.Millisecond, func() error {
			enc, err := c.Encrypt(ctx, "rk", pt, aad, false)
			if err != nil {
				return err
			}
			if got, err := xks.DecodeKeyVersion(enc.CiphertextMetadata); err != nil || got != v {
				return fmt.Errorf("version %d, want %d (%v)", got, v, err)
			}
			cts = append(cts, enc)
			return nil
		})
	}
	d.cli(t, nil, "audit", "verify", "--keystore", "/dr")

	out := filepath.Join(d.dir, "cluster")
	safe := filepath.Join(d.dir, "safe")
	if err := os.MkdirAll(safe, 0o700); err != nil {
		t.Fatal(err)
	}
	hsmDir := filepath.Join(d.dir, "hsm")
	conf := filepath.Join(hsmDir, "softhsm2.conf")
	pinFile := filepath.Join(safe, "pin")
	soFile := filepath.Join(safe, "so-pin")
	for f, v := range map[string]string{pinFile: tokenPIN, soFile: "so-" + tokenPIN} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := func(want bool, args ...string) string {
		t.Helper()
		cmd := exec.Command(d.bin, args...)
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
		var o bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &o
		err := cmd.Run()
		if (err == nil) != want {
			t.Fatalf("sovkeys %s: %v\n%s", strings.Join(args, " "), err, o.String())
		}
		return o.String()
	}
	tok := []string{"--hsm-module", softHSMModule(t), "--hsm-token-label", tokenLabel, "--hsm-pin-file", pinFile}
	keys, bkey, backup := filepath.Join(safe, "keys.json"), filepath.Join(safe, "backup-key.pem"), filepath.Join(d.dir, "backup")
	run(true, append([]string{"hsm", "export-keys", "--out", keys, "--to", bkey, "--hsm-so-pin-file", soFile}, tok...)...)
	backupCreds, restoreCreds := filepath.Join(safe, "backup.creds"), filepath.Join(safe, "restore.creds")
	run(true, "backup", "credential", "--trust", filepath.Join(out, "trust"), "--for", "backup", "--out", backupCreds)
	run(true, "backup", "credential", "--trust", filepath.Join(out, "trust"), "--for", "restore", "--out", restoreCreds)
	t.Logf("backup: %s", run(true, append([]string{"backup", "--nats", d.urls, "--creds", backupCreds, "--out", backup}, tok...)...))

	// All three nodes lost: services and servers stopped, JetStream data
	// and the HSM token deleted.
	for _, p := range d.services {
		p.stop()
	}
	for _, p := range d.nats {
		p.stop()
	}
	for i := range d.nats {
		if err := os.RemoveAll(filepath.Join(out, "nats", fmt.Sprintf("n%d", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(hsmDir); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	softHSMToken(t, hsmDir, tokenLabel, tokenPIN) // a new token: new serial, same label and PIN as the keyworkers are configured
	run(true, append([]string{"hsm", "import-keys", "--from", keys, "--backup-key", bkey}, tok...)...)
	for _, p := range d.nats {
		p.start(t)
	}
	testkit.CheckFor(t, 120*time.Second, time.Second, func() error {
		cmd := exec.Command(d.bin, append([]string{"restore", "--from", backup, "--nats", d.urls, "--creds", restoreCreds}, tok...)...)
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
		o, err := cmd.CombinedOutput()
		if err != nil {
			if strings.Contains(string(o), "not empty") {
				t.Fatalf("restore found streams in the new cluster: %s", o)
			}
			return fmt.Errorf("restore: %v: %s", err, o)
		}
		t.Logf("restore: %s", o)
		return nil
	})
	d.init(t)
	for _, p := range d.services {
		p.start(t)
	}
	c2 := &xksclient.Client{BaseURL: "https://" + d.gateways[1], Prefix: ks.URIPrefix, AccessKeyID: ks.AccessKeyID, Secret: ks.SecretAccessKey, HTTP: hc}
	testkit.CheckFor(t, 120*time.Second, 500*time.Millisecond, func() error {
		for i, enc := range cts {
			got, err := c2.Decrypt(ctx, "rk", enc, aad)
			if err != nil {
				return fmt.Errorf("version %d: %v", i+1, err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatalf("version %d decrypts to other bytes", i+1)
			}
		}
		return nil
	})
	t.Logf("cluster restore (new token, import, restore, init, start, old ciphertexts decrypt): %s", time.Since(began).Round(time.Millisecond))
	d.cli(t, nil, "audit", "verify", "--keystore", "/dr")
	d.cli(t, nil, "audit", "verify", "--operator")
}
