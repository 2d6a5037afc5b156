package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// enroll makes the key on the instance (0600, never printed) and prints a
// CSR for it that verifies; it refuses to replace a key without --force.
func TestEnroll(t *testing.T) {
	var out bytes.Buffer
	keyFile := filepath.Join(t.TempDir(), "sk", "key.pem")
	a := &Agent{Out: &out}
	if err := a.Enroll(context.Background(), EnrollOptions{Tenant: "vpc-1", Instance: "i-1", KeyFile: keyFile}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(keyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v", fi, err)
	}
	if bytes.Contains(out.Bytes(), []byte("PRIVATE KEY")) {
		t.Fatal("enroll printed the private key")
	}
	block, _ := pem.Decode(out.Bytes())
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("no CSR printed: %q", out.String())
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		t.Fatalf("CSR: %v", err)
	}
	kb, _ := os.ReadFile(keyFile)
	kblock, _ := pem.Decode(kb)
	key, err := x509.ParsePKCS8PrivateKey(kblock.Bytes)
	if err != nil || !key.(*ecdsa.PrivateKey).PublicKey.Equal(csr.PublicKey) {
		t.Fatalf("CSR is not for the key written: %v", err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != "sovkeys://tenant/vpc-1/instance/i-1" {
		t.Fatalf("CSR URIs %v", csr.URIs)
	}
	if err := a.Enroll(context.Background(), EnrollOptions{Tenant: "vpc-1", Instance: "i-1", KeyFile: keyFile}); err == nil {
		t.Fatal("enroll replaced an existing key without --force")
	}
	if err := a.Enroll(context.Background(), EnrollOptions{Tenant: "vpc-1", Instance: "i-1", KeyFile: keyFile, Force: true}); err != nil {
		t.Fatal(err)
	}
}
