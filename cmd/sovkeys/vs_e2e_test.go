package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// instanceClient issues a certificate for tenant/instance with the CLI and
// returns a client pinned to the signing key the CLI wrote.
func (n *node) instanceClient(t testing.TB, tenant, instance string) *vsclient.Client {
	t.Helper()
	dir := filepath.Join(t.TempDir(), instance)
	n.cli(t, nil, "instance", "issue-cert", "--tenant", tenant, "--instance", instance, "--out", dir)
	pemBytes, err := os.ReadFile(filepath.Join(dir, "signing-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	c, err := vsclient.New(vsclient.Config{
		BaseURL: n.gateway, CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"),
		CAFile: filepath.Join(n.dir, "tls", "ca.pem"), SigningKeyDER: block.Bytes,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.RSABits = 2048 // faster tests; 3072 by default
	return c
}

func vsStatus(err error) int {
	var e *vsclient.APIError
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func TestVolumeSecrets(t *testing.T) {
	n := testNode
	ctx := context.Background()
	n.cli(t, nil, "tenant", "create", "--id", "vpc-a")
	n.cli(t, nil, "tenant", "create", "--id", "vpc-b")
	i1 := n.instanceClient(t, "vpc-a", "i-0001")
	i2 := n.instanceClient(t, "vpc-a", "i-0002")
	other := n.instanceClient(t, "vpc-b", "i-0009")

	// The published signing key is the pinned one.
	der, err := vsclient.FetchSigningKey(ctx, n.http, n.gateway)
	if err != nil {
		t.Fatal(err)
	}
	if pub, err := vsclient.ParseSigningKey(der); err != nil || !pub.Equal(i1.SigningKey) {
		t.Fatalf("public-signing-key differs from the pinned key: %v", err)
	}

	// The original's functional check: generate -> convert -> decrypt = same 32 bytes.
	var secret, enc []byte
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error { // tenant and CA reach authn's caches asynchronously
		secret, enc, err = i1.GenerateSecret(ctx, "i-0001", "vol-1")
		return err
	})
	if len(secret) != 32 {
		t.Fatalf("secret has %d bytes", len(secret))
	}
	again, err := i1.DecryptSecret(ctx, "i-0001", "vol-1", enc)
	if err != nil || !bytes.Equal(again, secret) {
		t.Fatalf("decrypt: %v", err)
	}
	converted, err := i2.ConvertSecret(ctx, "i-0002", "i-0001", "vol-1", enc)
	if err != nil {
		t.Fatalf("convert: %v", err)
	}
	got, err := i2.DecryptSecret(ctx, "i-0002", "vol-1", converted)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("decrypt after convert: %v", err)
	}

	tampered := append([]byte{}, enc...)
	tampered[len(tampered)-1] ^= 1
	for _, tc := range []struct {
		name   string
		call   func() error
		status int
	}{
		{"other volume uuid", func() error { _, err := i1.DecryptSecret(ctx, "i-0001", "vol-2", enc); return err }, 400},
		{"other instance", func() error { _, err := i2.DecryptSecret(ctx, "i-0002", "vol-1", enc); return err }, 400},
		{"old owner after convert", func() error { _, err := i1.DecryptSecret(ctx, "i-0001", "vol-1", converted); return err }, 400},
		{"other tenant", func() error { _, err := other.ConvertSecret(ctx, "i-0009", "i-0001", "vol-1", enc); return err }, 0},
		{"tampered blob", func() error { _, err := i1.DecryptSecret(ctx, "i-0001", "vol-1", tampered); return err }, 400},
		{"path names another instance", func() error { _, err := i1.DecryptSecret(ctx, "i-0002", "vol-1", enc); return err }, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil {
				t.Fatal("expected an error")
			}
			if tc.status == 0 {
				if s := vsStatus(err); s < 400 || s >= 500 {
					t.Fatalf("got %v", err)
				}
				return
			}
			if vsStatus(err) != tc.status {
				t.Fatalf("got %v, want %d", err, tc.status)
			}
		})
	}

	t.Run("no client certificate", func(t *testing.T) {
		resp, err := n.http.Post(n.gateway+"/v1/encryption/i-0001/generate-secret", "application/json", bytes.NewReader([]byte(`{}`)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		cert, err := tls.LoadX509KeyPair(filepath.Join(n.dir, "tls", "cert.pem"), filepath.Join(n.dir, "tls", "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		tr := n.http.Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
		hc := &http.Client{Transport: tr}
		resp, err := hc.Post(n.gateway+"/v1/encryption/i-0001/generate-secret", "application/json", bytes.NewReader([]byte(`{}`)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("disabled tenant", func(t *testing.T) {
		n.cli(t, nil, "tenant", "disable", "--id", "vpc-b")
		testkit.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			_, _, err := other.GenerateSecret(ctx, "i-0009", "vol-9")
			if vsStatus(err) != 403 {
				return fmt.Errorf("got %v", err)
			}
			return nil
		})
	})
	t.Run("bad input", func(t *testing.T) {
		for _, body := range []string{`{`, `{"volume_uuid":"v","rsa_wrapping_key":"!!"}`, `{"volume_uuid":"v","rsa_wrapping_key":"AAAA"}`, `{"volume_uuid":"v","extra":1}`} {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, n.gateway+"/v1/encryption/i-0001/generate-secret", bytes.NewReader([]byte(body)))
			if err := vs.SignRequest(req.Header, http.MethodPost, req.URL.EscapedPath(), []byte(body), i1.Key, time.Now()); err != nil {
				t.Fatal(err)
			}
			resp, err := i1.HTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("%s: status %d", body, resp.StatusCode)
			}
		}
	})
}

// Concurrent first calls for one tenant create exactly one EKT: every
// secret generated in the race stays decryptable.
func TestVolumeSecretsConcurrentFirstUse(t *testing.T) {
	n := testNode
	ctx := context.Background()
	n.cli(t, nil, "tenant", "create", "--id", "vpc-race")
	c := n.instanceClient(t, "vpc-race", "i-race")
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, err := c.DecryptSecret(ctx, "i-race", "probe", []byte{1})
		if vsStatus(err) == 401 || vsStatus(err) == 403 || vsStatus(err) == 503 {
			return err // not yet visible to authn
		}
		return nil
	})
	const callers = 8
	type result struct {
		secret, enc []byte
		err         error
	}
	results := make([]result, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, e, err := c.GenerateSecret(ctx, "i-race", fmt.Sprintf("vol-%d", i))
			results[i] = result{s, e, err}
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("caller %d: %v", i, r.err)
		}
		got, err := c.DecryptSecret(ctx, "i-race", fmt.Sprintf("vol-%d", i), r.enc)
		if err != nil || !bytes.Equal(got, r.secret) {
			t.Fatalf("caller %d: secret not decryptable after the race: %v", i, err)
		}
	}
}
