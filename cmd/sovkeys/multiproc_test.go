package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/services/gateway"
	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/client/xksclient"
	"github.com/sovkeys/sovkeys/shared/infra/clusterinit"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// TestSeparateProcesses runs one NATS server and the four services as
// separate OS processes, each with its own NATS credentials, and does an
// XKS round trip through them.
func TestSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts five processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sovkeys")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	// One NATS server with operator-signed accounts.
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t, trust.Configure)
	creds := func(name string) string {
		p := filepath.Join(dir, name+".creds")
		perms := natsauth.ServicePermissions(name, []string{"default"})
		if err := trust.WriteUserCreds(p, name, perms); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// A SoftHSM token of the keyworker process's own.
	hsmDir := filepath.Join(dir, "hsm")
	if err := os.MkdirAll(filepath.Join(hsmDir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(hsmDir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(hsmDir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	initTok := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "mp", "--so-pin", "so-pin-1234", "--pin", "user-pin-1234")
	initTok.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := initTok.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v\n%s", err, out)
	}
	module, err := keyworker.FindSoftHSMModule()
	if err != nil {
		t.Fatal(err)
	}
	tlsFiles, err := gateway.EnsureDevTLS(filepath.Join(dir, "tls"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	gwPort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	gwAddr := fmt.Sprintf("127.0.0.1:%d", gwPort)

	url := ns.ClientURL()
	start := func(name string, env []string, args ...string) {
		cmd := exec.Command(bin, append([]string{name, "--nats", url, "--creds", creds(name), "--log-level", "warn"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			if t.Failed() {
				t.Logf("%s stderr:\n%s", name, stderr.String())
			}
		})
	}
	// The bootstrap identity declares the mesh; the services only bind.
	boot := filepath.Join(dir, "bootstrap.creds")
	if err := trust.WriteUserCreds(boot, shared.UserBootstrap, natsauth.BootstrapPermissions()); err != nil {
		t.Fatal(err)
	}
	// A person with every role; `sovkeys init` publishes the roster file
	// beside the bootstrap credential.
	admin, _, err := clusterinit.EnsurePerson(trust, dir, clusterinit.PersonSpec{Name: "admin", Roles: natsauth.Roles()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := clusterinit.WriteRoster(filepath.Join(dir, clusterinit.RosterFile), []clusterinit.RosterEntry{admin}); err != nil {
		t.Fatal(err)
	}
	// authn's work key beside its credential, and its public key beside the
	// bootstrap credential, where `sovkeys init` pins it (as cluster init
	// lays them out).
	workPub, _, err := shared.EnsureWorkKey(filepath.Join(dir, shared.WorkKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, clusterinit.WorkKeysFile), []byte(`["`+workPub+`"]`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "init", "--nats", url, "--creds", boot, "--pools", "default").CombinedOutput(); err != nil {
		t.Fatalf("sovkeys init: %v\n%s", err, out)
	}
	start("keyworker", []string{"SOFTHSM2_CONF=" + conf, "SOVKEYS_HSM_PIN=user-pin-1234"},
		"--hsm-module", module, "--hsm-token-label", "mp", "--sessions", "4")
	start("audit", nil)
	start("authn", nil)
	start("gateway", nil, "--listen", gwAddr, "--tls-cert", tlsFiles.CertFile, "--tls-key", tlsFiles.KeyFile)

	caPEM, err := os.ReadFile(tlsFiles.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	testkit.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		resp, err := hc.Get("https://" + gwAddr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz %d", resp.StatusCode)
		}
		return nil
	})

	operatorCreds := clusterinit.PersonCredsFile(dir, "admin")
	cli := func(out any, args ...string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "SOVKEYS_NATS_URL="+url, "SOVKEYS_NATS_CREDS="+operatorCreds)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("sovkeys %v: %v\n%s", args, err, stderr.String())
		}
		if out != nil {
			if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
				t.Fatalf("output %q: %v", stdout.String(), err)
			}
		}
	}
	var ks keystoreCreds
	cli(&ks, "xks", "keystore", "create", "--prefix", "/mp")
	cli(nil, "xks", "key", "create", "--keystore", "/mp", "--id", "k1")

	c := &xksclient.Client{BaseURL: "https://" + gwAddr, Prefix: ks.URIPrefix, AccessKeyID: ks.AccessKeyID, Secret: ks.SecretAccessKey, HTTP: hc}
	ctx := context.Background()
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, err := c.Health(ctx)
		return err
	})
	out, err := c.Encrypt(ctx, "k1", []byte("across five processes"), []byte("aad"), true)
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	pt, err := c.Decrypt(ctx, "k1", out, []byte("aad"))
	if err != nil || string(pt) != "across five processes" {
		t.Fatalf("decrypt: %q %v", pt, err)
	}
}
