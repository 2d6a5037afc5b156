package gateway

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DevTLS are the files EnsureDevTLS maintains.
type DevTLS struct {
	CAFile, CertFile, KeyFile string
}

// EnsureDevTLS creates, once, a private CA and a gateway certificate for
// localhost and 127.0.0.1 under dir (ca.pem, cert.pem, key.pem; keys mode
// 0600; the CA key is not kept). Later calls reuse the files.
func EnsureDevTLS(dir string, now time.Time) (DevTLS, error) {
	d := DevTLS{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")}
	if _, err := os.Stat(d.CertFile); err == nil {
		return d, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return d, fmt.Errorf("gateway: tls: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return d, fmt.Errorf("gateway: tls: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return d, fmt.Errorf("gateway: tls: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "sovkeys local CA", Organization: []string{"sovkeys"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(5, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return d, fmt.Errorf("gateway: tls: %w", err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return d, fmt.Errorf("gateway: tls: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "localhost", Organization: []string{"sovkeys"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(1, 0, 0),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return d, fmt.Errorf("gateway: tls: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return d, fmt.Errorf("gateway: tls: %w", err)
	}
	for _, f := range []struct {
		path, typ string
		der       []byte
		mode      os.FileMode
	}{
		{d.CAFile, "CERTIFICATE", caDER, 0o644},
		{d.KeyFile, "PRIVATE KEY", keyDER, 0o600},
		{d.CertFile, "CERTIFICATE", der, 0o644},
	} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), f.mode); err != nil {
			return d, fmt.Errorf("gateway: tls: %w", err)
		}
	}
	return d, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
