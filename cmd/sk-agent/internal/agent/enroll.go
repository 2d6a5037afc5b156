package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
)

// EnrollOptions are the options of `sk-agent enroll`.
type EnrollOptions struct {
	Tenant, Instance string
	KeyFile          string // default Cfg.Key
	Force            bool   // replace an existing key file
}

// Enroll makes the instance's private key on the instance (ECDSA P-256,
// written 0600 to the configured key file, never printed) and prints a
// certificate signing request for it, which an operator signs with
// `sovkeys instance issue-cert --csr FILE` (2026-12-07): the key never
// leaves the instance, unlike the older flow where issue-cert makes it.
func (a *Agent) Enroll(_ context.Context, o EnrollOptions) error {
	if o.KeyFile == "" {
		o.KeyFile = a.Cfg.Key
	}
	if o.KeyFile == "" || o.Tenant == "" || o.Instance == "" {
		return usagef("--tenant, --instance and a key file (--key, or key in the configuration) are required")
	}
	if _, err := os.Stat(o.KeyFile); err == nil && !o.Force {
		return fmt.Errorf("%s exists: an enrolled instance keeps its key (--force replaces it, and the certificate issued for it stops working)", o.KeyFile)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	uri := &url.URL{Scheme: "sovkeys", Host: "tenant", Path: "/" + o.Tenant + "/instance/" + o.Instance}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: o.Instance}, URIs: []*url.URL{uri},
	}, key)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	defer clear(der)
	if a.DryRun {
		fmt.Fprintf(a.Out, "dry run: would write a new P-256 key to %s and print its CSR\n", o.KeyFile)
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(o.KeyFile), 0o700); err != nil {
		return err
	}
	tmp := o.KeyFile + ".new"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, o.KeyFile); err != nil {
		return err
	}
	_, err = a.Out.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
	return err
}
