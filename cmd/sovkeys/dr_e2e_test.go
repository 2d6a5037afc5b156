package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// drChildEnv is the environment of the drill's processes: this test
// binary's SoftHSM configuration and sovkeys settings are left out, so
// each process finds the token of its own --data.
func drChildEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SOFTHSM2_CONF=") || strings.HasPrefix(kv, "SOVKEYS_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// startStandaloneProc runs `sovkeys standalone` as its own process (its
// own SoftHSM library state) and waits until the gateway is ready.
func startStandaloneProc(t *testing.T, bin, dir string, extra ...string) *node {
	t.Helper()
	gwPort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	natsPort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{dir: dir, gateway: fmt.Sprintf("https://127.0.0.1:%d", gwPort), natsURL: fmt.Sprintf("nats://127.0.0.1:%d", natsPort),
		creds: filepath.Join(dir, "operators", "admin.creds"), done: make(chan int, 1), stderr: &syncBuffer{}, stdout: &syncBuffer{}}
	cmd := exec.Command(bin, append([]string{"standalone", "--data", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", gwPort),
		"--nats-listen", fmt.Sprintf("127.0.0.1:%d", natsPort), "--log-level", "warn", "--request-timeout", testRequestTimeout.String()}, extra...)...)
	cmd.Env, cmd.Stdout, cmd.Stderr = drChildEnv(), n.stdout, n.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		n.done <- cmd.ProcessState.ExitCode()
	}()
	n.stop = func() { _ = cmd.Process.Signal(syscall.SIGTERM) }
	t.Cleanup(func() {
		select {
		case code := <-n.done:
			n.done <- code
		default:
			_ = cmd.Process.Kill()
		}
	})
	var pool *x509.CertPool
	testkit.CheckFor(t, nodeStartTimeout, 100*time.Millisecond, func() error {
		select {
		case code := <-n.done:
			n.done <- code
			t.Fatalf("standalone exited %d: %s", code, n.stderr.String())
		default:
		}
		pemBytes, err := os.ReadFile(filepath.Join(dir, "tls", "ca.pem"))
		if err != nil {
			return err
		}
		pool = x509.NewCertPool()
		pool.AppendCertsFromPEM(pemBytes)
		n.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
		resp, err := n.http.Get(n.gateway + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz %d", resp.StatusCode)
		}
		return nil
	})
	return n
}

// drRun runs the binary (commands that load the HSM module run in a
// process of their own) and returns its output; want says whether it must
// succeed.
func drRun(t *testing.T, bin string, want bool, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = drChildEnv()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if want && err != nil {
		t.Fatalf("sovkeys %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	if !want && err == nil {
		t.Fatalf("sovkeys %s succeeded, want a refusal:\n%s", strings.Join(args, " "), out.String())
	}
	return out.String() + errOut.String()
}

func writeSecret(t *testing.T, path, v string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// vsClientFor is instanceClient with the certificate kept in dir and the
// gateway CA of node n (a restored node has a new one).
func vsClientFor(t *testing.T, n *node, dir string) *vsclient.Client {
	t.Helper()
	pemBytes, err := os.ReadFile(filepath.Join(dir, "signing-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	c, err := vsclient.New(vsclient.Config{BaseURL: n.gateway, CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"),
		CAFile: filepath.Join(n.dir, "tls", "ca.pem"), SigningKeyDER: block.Bytes})
	if err != nil {
		t.Fatal(err)
	}
	c.RSABits = 2048
	return c
}

// TestDisasterRecoveryDrill is the drill of docs/operations.md, "Disaster
// recovery": a standalone node with key stores, keys rotated twice,
// tenants and volume secrets is backed up and its keys exported; then its
// data directory and HSM token are deleted. A new token (other label, PIN
// and serial, made with softhsm2-util) in a fresh data directory gets the
// keys and the backup, and every old ciphertext and volume secret opens,
// and every audit log verifies across the restore, also with
// golang.org/x/mod/sumdb/tlog.
func TestDisasterRecoveryDrill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs two standalone nodes")
	}
	ctx := context.Background()
	root := t.TempDir()
	bin := filepath.Join(root, "sovkeys")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	safe := filepath.Join(root, "safe") // what lives apart from the node: PIN files, backup key
	if err := os.MkdirAll(safe, 0o700); err != nil {
		t.Fatal(err)
	}
	soPIN := writeSecret(t, filepath.Join(safe, "so-pin"), "so-"+hex.EncodeToString(randBytes(t, 8)))

	// Site A: a node with keys, rotations, tenants and volume secrets.
	dataA := filepath.Join(root, "site-a")
	unsealA := filepath.Join(safe, "unseal-a")
	a := startStandaloneProc(t, bin, dataA, "--hsm-so-pin-file", soPIN, "--dev-unseal-file", unsealA)
	xc, _ := a.newKeystore(t, "/dr")
	a.cli(t, nil, "xks", "key", "create", "--keystore", "/dr", "--id", "rk", "--usage", "encrypt,decrypt")
	waitUsable(t, xc)
	pt, aad := randBytes(t, 4300), randBytes(t, 512)
	var cts []*xks.EncryptResponse
	for v := 1; v <= 3; v++ {
		if v > 1 {
			a.cli(t, nil, "xks", "key", "rotate", "--keystore", "/dr", "--id", "rk")
		}
		cts = append(cts, encryptNewest(t, xc, pt, aad, v))
	}
	a.cli(t, nil, "tenant", "create", "--id", "vpc-dr")
	certDir := filepath.Join(root, "i-dr1")
	a.cli(t, nil, "instance", "issue-cert", "--tenant", "vpc-dr", "--instance", "i-dr1", "--out", certDir)
	vc := vsClientFor(t, a, certDir)
	secrets := map[string][2][]byte{}
	for _, vol := range []string{"vol-1", "vol-2", "vol-3"} {
		testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			s, enc, err := vc.GenerateSecret(ctx, "i-dr1", vol)
			if err == nil {
				secrets[vol] = [2][]byte{s, enc}
			}
			return err
		})
	}
	for _, scope := range [][]string{{"--keystore", "/dr"}, {"--tenant", "vpc-dr"}} {
		a.cli(t, nil, append([]string{"audit", "verify"}, scope...)...)
	}

	// Back up (online) and export the keys.
	pinA, err := readDevShares(unsealA)
	if err != nil {
		t.Fatal(err)
	}
	pinAFile := writeSecret(t, filepath.Join(safe, "pin-a"), pinA)
	backupKey, keysFile, backupDir := filepath.Join(safe, "backup-key.pem"), filepath.Join(safe, "keys.json"), filepath.Join(root, "backup")
	out := drRun(t, bin, true, "hsm", "export-keys", "--data", dataA, "--pool", "default", "--out", keysFile, "--to", backupKey,
		"--hsm-so-pin-file", soPIN, "--hsm-pin-file", pinAFile)
	if strings.Contains(out, "NOT EXPORTED") {
		t.Fatalf("keys left behind: %s", out)
	}
	drRun(t, bin, false, "hsm", "export-keys", "--data", dataA, "--out", filepath.Join(root, "k2.json"), "--to", filepath.Join(root, "bk2.pem"),
		"--hsm-so-pin-file", pinAFile, "--hsm-pin-file", pinAFile) // the user PIN is not the SO's
	began := time.Now()
	out = drRun(t, bin, true, "backup", "--data", dataA, "--nats", a.natsURL, "--out", backupDir, "--hsm-pin-file", pinAFile)
	backupTook := time.Since(began)
	t.Logf("backup: %s(%s)", out, backupTook)
	if strings.Contains(out, " 0 audit checkpoints") {
		t.Errorf("the manifest names no audit checkpoint: %s", out)
	}
	if c := a.shutdown(); c != 0 {
		t.Fatalf("site A exited %d: %s", c, a.stderr.String())
	}

	// The disaster: data directory and token gone.
	if err := os.RemoveAll(dataA); err != nil {
		t.Fatal(err)
	}

	// Site B: a new token made with softhsm2-util, in a fresh data dir.
	began = time.Now()
	dataB := filepath.Join(root, "site-b")
	hsmB := filepath.Join(dataB, "hsm")
	if err := os.MkdirAll(filepath.Join(hsmB, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(hsmB, "softhsm2.conf")
	writeSecret(t, conf, "directories.tokendir = "+filepath.Join(hsmB, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR")
	pinB := "pin-b-" + hex.EncodeToString(randBytes(t, 8))
	initTok := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "sovkeys-dr", "--so-pin", "so-b-"+hex.EncodeToString(randBytes(t, 4)), "--pin", pinB)
	initTok.Env = append(drChildEnv(), "SOFTHSM2_CONF="+conf)
	if out, err := initTok.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v\n%s", err, out)
	}
	pinBFile := writeSecret(t, filepath.Join(safe, "pin-b"), pinB)
	tokB := []string{"--data", dataB, "--hsm-token-label", "sovkeys-dr", "--hsm-pin-file", pinBFile}

	// Bad input is refused and changes nothing.
	otherKey := filepath.Join(root, "other-key.pem")
	if err := os.WriteFile(otherKey, pem.EncodeToMemory(&pem.Block{Type: backupKeyPEM, Bytes: randBytes(t, 32)}), 0o600); err != nil {
		t.Fatal(err)
	}
	drRun(t, bin, false, append([]string{"hsm", "import-keys", "--from", keysFile, "--backup-key", otherKey}, tokB...)...)
	drRun(t, bin, false, append([]string{"hsm", "import-keys", "--from", keysFile, "--backup-key", backupKey, "--pool", "other"}, tokB...)...)
	if out := drRun(t, bin, false, append([]string{"restore", "--from", backupDir}, tokB...)...); !strings.Contains(out, "import-keys") {
		t.Errorf("restore before the keys are imported: %s", out)
	}
	drRun(t, bin, true, append([]string{"hsm", "import-keys", "--from", keysFile, "--backup-key", backupKey}, tokB...)...)
	tampered := filepath.Join(root, "tampered")
	copyDir(t, backupDir, tampered)
	snaps, _ := filepath.Glob(filepath.Join(tampered, "streams", "*.tar.s2"))
	flipByte(t, snaps[0])
	if out := drRun(t, bin, false, append([]string{"restore", "--from", tampered}, tokB...)...); !strings.Contains(out, "does not match the manifest") {
		t.Errorf("tampered snapshot: %s", out)
	}
	copyDir(t, backupDir, filepath.Join(root, "tampered-manifest"))
	flipByte(t, filepath.Join(root, "tampered-manifest", manifestFile))
	drRun(t, bin, false, append([]string{"restore", "--from", filepath.Join(root, "tampered-manifest")}, tokB...)...)

	out = drRun(t, bin, true, append([]string{"restore", "--from", backupDir}, tokB...)...)
	t.Logf("restore: %s", out)
	if out := drRun(t, bin, false, append([]string{"restore", "--from", backupDir}, tokB...)...); !strings.Contains(out, "not empty") {
		t.Errorf("second restore: %s", out)
	}
	shares, err := unseal.SplitPIN(pinB, "default", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, s := range shares {
		lines = append(lines, s.Encode())
	}
	unsealB := writeSecret(t, filepath.Join(safe, "unseal-b"), strings.Join(lines, "\n"))
	b := startStandaloneProc(t, bin, dataB, "--hsm-token-label", "sovkeys-dr", "--dev-unseal-file", unsealB)
	t.Cleanup(func() { b.shutdown() })

	// Every old ciphertext and volume secret opens.
	xb := b.client(keystoreCreds{URIPrefix: xc.Prefix, AccessKeyID: xc.AccessKeyID, SecretAccessKey: xc.Secret})
	var restoreTook time.Duration
	testkit.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		for i, enc := range cts {
			got, err := xb.Decrypt(ctx, "rk", enc, aad)
			if err != nil {
				return fmt.Errorf("version %d ciphertext: %w", i+1, err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatalf("version %d ciphertext decrypts to other bytes", i+1)
			}
		}
		return nil
	})
	restoreTook = time.Since(began)
	vb := vsClientFor(t, b, certDir)
	for vol, s := range secrets {
		got, err := vb.DecryptSecret(ctx, "i-dr1", vol, s[1])
		if err != nil || !bytes.Equal(got, s[0]) {
			t.Fatalf("volume secret %s after restore: %v", vol, err)
		}
	}
	if _, err := xb.Encrypt(ctx, "rk", pt, aad, false); err != nil {
		t.Fatalf("encrypt after restore: %v", err)
	}

	// Every audit log verifies as one log across the restore; the operator
	// log names the backup.
	for _, scope := range [][]string{{"--keystore", "/dr"}, {"--tenant", "vpc-dr"}, {"--operator"}} {
		testkit.CheckFor(t, 30*time.Second, 500*time.Millisecond, func() error {
			return b.cliErr(nil, append([]string{"audit", "verify"}, scope...)...)
		})
	}
	checkRestoreRecord(t, b)
	checkTlogIndependently(t, b, auditlog.Scope{Kind: shared.AuditKindXKS, ID: "dr"})
	t.Logf("DR drill: %d XKS ciphertexts, %d volume secrets; backup %s; restore (new token, import, restore, start, first decrypt) %s",
		len(cts), len(secrets), backupTook.Round(time.Millisecond), restoreTook.Round(time.Millisecond))
}

// checkRestoreRecord finds the operator record of the restore, chained
// into the operator log.
func checkRestoreRecord(t *testing.T, n *node) {
	t.Helper()
	nc, js, err := mesh.Connect(context.Background(), mesh.ConnConfig{URL: n.natsURL, CredsFile: n.creds, Name: "dr-test"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	testkit.CheckFor(t, 30*time.Second, 500*time.Millisecond, func() error {
		found := false
		err := auditlog.StreamSource{JS: js}.Records(context.Background(), auditlog.Scope{Kind: shared.AuditKindOperator}, func(_ uint64, data []byte, err error) error {
			if err == nil && bytes.Contains(data, []byte(APIRestore)) && bytes.Contains(data, []byte("manifest_sha256")) {
				found = true
			}
			return err
		})
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("no %s record in the operator log", APIRestore)
		}
		return nil
	})
}

// checkTlogIndependently recomputes the scope's tree root with
// golang.org/x/mod/sumdb/tlog from the records and compares it with the
// signed checkpoint `sovkeys audit verify` accepted.
func checkTlogIndependently(t *testing.T, n *node, sc auditlog.Scope) {
	t.Helper()
	var rep auditlog.TlogReport
	var out bytes.Buffer
	if code := run(context.Background(), []string{"audit", "verify", "--keystore", sc.ID, "--json"}, n.getenv, &out, &bytes.Buffer{}); code != 0 {
		t.Fatalf("audit verify --json exit %d", code)
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	nc, js, err := mesh.Connect(context.Background(), mesh.ConnConfig{URL: n.natsURL, CredsFile: n.creds, Name: "dr-tlog"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		hs := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			hs[i] = stored[x]
		}
		return hs, nil
	})
	var count int64
	err = auditlog.StreamSource{JS: js}.Records(context.Background(), sc, func(_ uint64, data []byte, err error) error {
		if err != nil || count >= rep.Size {
			return err
		}
		hs, err := tlog.StoredHashes(count, data, reader)
		if err != nil {
			return err
		}
		stored = append(stored, hs...)
		count++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if count != rep.Size {
		t.Fatalf("%d records read, the signed tree has %d", count, rep.Size)
	}
	root, err := tlog.TreeHash(rep.Size, reader)
	if err != nil {
		t.Fatal(err)
	}
	if got := base64.StdEncoding.EncodeToString(root[:]); got != rep.Root {
		t.Fatalf("x/mod/sumdb/tlog root %s differs from the signed root %s", got, rep.Root)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-r", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := len(b) / 2
	b[i] ^= 0x20
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestHSMCheckCLI: `sovkeys hsm check` prints the table for the node's
// SoftHSM token and accepts it; an unknown token is a clear error.
func TestHSMCheckCLI(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"hsm", "check", "--hsm-token-label", standaloneTokenLabel}, func(string) string { return "" }, &out, &errOut); code != 0 {
		t.Fatalf("hsm check exit %d: %s%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{"CKM_AES_GCM", "CKM_ECDSA", "XKS encrypt/decrypt", "ok (fallback CKM_AES_KEY_WRAP_PAD)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("hsm check output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	errOut.Reset()
	if code := run(context.Background(), []string{"hsm", "check", "--hsm-token-label", "no-such-token"}, func(string) string { return "" }, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "not found") {
		t.Errorf("hsm check of a missing token: exit %d %s", code, errOut.String())
	}
}
