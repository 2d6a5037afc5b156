package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/client/xksclient"
)

const (
	floorTestKeyID  = "ABCDEFGHIJKLMNOPQRST"
	floorTestSecret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cw=="
)

// startFloor serves the floor on a free loopback port with a fresh
// self-signed certificate; it returns the base URL and the CA file.
func startFloor(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "floor"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := floorConfig{Listen: ln.Addr().String(), CertFile: certFile, KeyFile: keyFile, Prefix: "bench",
		AccessKeyID: floorTestKeyID, Secret: floorTestSecret}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- serveFloor(ctx, ln, cfg, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("floor: %v", err)
		}
	})
	return "https://" + ln.Addr().String(), certFile
}

func floorArgs(url, ca string, n int, extra ...string) []string {
	return append([]string{"-url", url, "-ca", ca, "-prefix", "/bench", "-key", "k1",
		"-access-key-id", floorTestKeyID, "-secret", floorTestSecret,
		"-warmup", "0s", "-duration", "1m", "-max-requests", strconv.Itoa(n), "-size", "64", "-aad", "16"}, extra...)
}

// The floor answers the load generator's encrypts and decrypts correctly:
// the generator checks every decrypt against its plaintext.
func TestFloorServesLoad(t *testing.T) {
	url, ca := startFloor(t)
	for _, op := range []string{OpEncrypt, OpDecrypt} {
		t.Run(op, func(t *testing.T) {
			rep, _, out := runReport(t, context.Background(), floorArgs(url, ca, 200, "-op", op, "-pool", "8", "-concurrency", "4"))
			if rep.Succeeded == 0 || rep.ErrorCount != 0 {
				t.Fatalf("floor %s: %d ok, %d errors\n%s", op, rep.Succeeded, rep.ErrorCount, out)
			}
		})
	}
}

// The floor checks signatures as authn does: a wrong secret, a wrong prefix
// and a tampered ciphertext are refused.
func TestFloorRefuses(t *testing.T) {
	url, ca := startFloor(t)
	tc, err := tlsConfig(ca)
	if err != nil {
		t.Fatal(err)
	}
	hc := newHTTPClient(tc, 1, 0, 5*time.Second, true)
	good := &xksclient.Client{BaseURL: url, Prefix: "/bench", AccessKeyID: floorTestKeyID, Secret: floorTestSecret, HTTP: hc}
	ctx := context.Background()
	resp, err := good.Encrypt(ctx, "k1", []byte("plaintext"), nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.CiphertextDataIntegrityValue) == 0 {
		t.Error("encrypt with a CDIV algorithm returned no ciphertextDataIntegrityValue")
	}
	tampered := *resp
	tampered.Ciphertext = append([]byte{}, resp.Ciphertext...)
	tampered.Ciphertext[0] ^= 1
	badSecret := *good
	badSecret.Secret = "b3RoZXJvdGhlcm90aGVyb3RoZXJvdGhlcm90aGVyb3RoZXI="
	badPrefix := *good
	badPrefix.Prefix = "/other"
	for _, tc := range []struct {
		name   string
		call   func() error
		status int
		errNm  string
	}{
		{"wrong secret", func() error { _, err := badSecret.Encrypt(ctx, "k1", []byte("x"), nil, false); return err }, 401, "AuthenticationFailedException"},
		{"wrong prefix", func() error { _, err := badPrefix.Encrypt(ctx, "k1", []byte("x"), nil, false); return err }, 404, "InvalidUriPathException"},
		{"tampered ciphertext", func() error { _, err := good.Decrypt(ctx, "k1", &tampered, nil); return err }, 400, "InvalidCiphertextException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			ae, ok := err.(*xksclient.APIError)
			if !ok || ae.Status != tc.status || ae.Name != tc.errNm {
				t.Fatalf("got %v, want %d %s", err, tc.status, tc.errNm)
			}
		})
	}
}
