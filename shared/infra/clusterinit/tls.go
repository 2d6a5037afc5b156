package clusterinit

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
	"slices"
	"time"
)

// The cluster is closed by default (2026-12-07): without --nats-tls-* files,
// Init makes a cluster CA under DIR/nats/tls and one certificate per node,
// valid for both TLS ends. Routes are mutual TLS (nats-server requires and
// verifies a route's certificate against ca_file), so a process without a
// certificate of this CA cannot join the cluster and bypass user
// permissions; clients must speak TLS and verify the nodes with ca.pem
// (SOVKEYS_NATS_CA in cluster.env) before their NATS credential is checked.

// ClusterTLSDir is where Init keeps the cluster CA and node certificates.
const ClusterTLSDir = "nats/tls"

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	nodeValidity = 365 * 24 * time.Hour
	// nodeRenewal: a node certificate is re-issued by Init when less than
	// this is left (run cluster init at least monthly; the
	// CredentialExpiresSoon alert covers the user JWTs the same way).
	nodeRenewal = 60 * 24 * time.Hour
)

// clusterTLS makes (once) the cluster CA and (again when missing, due for
// renewal, naming other hosts or signed by another CA) each node's
// certificate; it returns the CA file and each node's TLS files.
func clusterTLS(dir string, nodes []Node, now time.Time, res *Result) (string, []TLSFiles, error) {
	tdir := filepath.Join(dir, ClusterTLSDir)
	if err := os.MkdirAll(tdir, 0o700); err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	caFile, caKeyFile := filepath.Join(tdir, "ca.pem"), filepath.Join(tdir, "ca.key")
	ca, caKey, err := loadPair(caFile, caKeyFile)
	if err != nil || ca.NotAfter.Before(now.Add(nodeValidity)) {
		if ca, caKey, err = newCA(now); err != nil {
			return "", nil, err
		}
		if err := writePair(caFile, caKeyFile, ca, caKey, res); err != nil {
			return "", nil, err
		}
	}
	var out []TLSFiles
	for _, n := range nodes {
		f := TLSFiles{CertFile: filepath.Join(tdir, n.Name+".pem"), KeyFile: filepath.Join(tdir, n.Name+".key"), CAFile: caFile}
		out = append(out, f)
		if cert, _, err := loadPair(f.CertFile, f.KeyFile); err == nil && cert.CheckSignatureFrom(ca) == nil &&
			cert.NotAfter.Sub(now) > nodeRenewal && cert.VerifyHostname(n.Host) == nil {
			continue
		}
		cert, key, err := newNodeCert(ca, caKey, n, now)
		if err != nil {
			return "", nil, err
		}
		if err := writePair(f.CertFile, f.KeyFile, cert, key, res); err != nil {
			return "", nil, err
		}
	}
	return caFile, out, nil
}

func newCA(now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "sovkeys NATS cluster CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(caValidity),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	return sign(tmpl, tmpl, &key.PublicKey, key, key)
}

// newNodeCert certifies node n for serverAuth (clients and inbound routes)
// and clientAuth (its outbound routes), named by its host, localhost and
// 127.0.0.1 (nodes on one machine, health checks inside a container).
func newNodeCert(ca *x509.Certificate, caKey *ecdsa.PrivateKey, n Node, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "sovkeys NATS node " + n.Name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(nodeValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	if ip := net.ParseIP(n.Host); ip != nil {
		if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	} else if n.Host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, n.Host)
	}
	return sign(tmpl, ca, &key.PublicKey, caKey, key)
}

func sign(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer, key *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certificate: %v", ErrInit, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certificate: %v", ErrInit, err)
	}
	return cert, key, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail (Go 1.24+)
	}
	return n
}

func loadPair(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	cp, _ := pem.Decode(cb)
	kp, _ := pem.Decode(kb)
	if cp == nil || kp == nil {
		return nil, nil, errors.New("not PEM")
	}
	cert, err := x509.ParseCertificate(cp.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(kp.Bytes)
	if err != nil {
		return nil, nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, errors.New("key does not match certificate")
	}
	return cert, key, nil
}

// writePair writes a certificate (0644) and its key (0600).
func writePair(certFile, keyFile string, cert *x509.Certificate, key *ecdsa.PrivateKey, res *Result) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInit, err)
	}
	if err := writeIfChanged(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600, res); err != nil {
		return err
	}
	return writeIfChanged(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644, res)
}
