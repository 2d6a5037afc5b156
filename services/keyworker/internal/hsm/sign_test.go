package hsm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"
)

func TestSignSHA256(t *testing.T) {
	h := newHierarchyHSM(t)
	ctx := t.Context()
	for _, label := range []string{SigningKeyLabel, CAKeyLabel} {
		t.Run(label, func(t *testing.T) {
			der, err := h.PublicKey(ctx, label)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := x509.ParsePKIXPublicKey(der)
			if err != nil {
				t.Fatal(err)
			}
			ec, ok := pub.(*ecdsa.PublicKey)
			if !ok || ec.Curve != elliptic.P384() {
				t.Fatalf("public key is %T, want ECDSA P-384", pub)
			}
			for _, msg := range [][]byte{nil, []byte("blob"), randBytes(4096)} {
				sig, err := h.SignSHA256(ctx, label, msg)
				if err != nil {
					t.Fatal(err)
				}
				digest := sha256.Sum256(msg)
				if !ecdsa.VerifyASN1(ec, digest[:], sig) {
					t.Fatalf("signature over %d bytes does not verify", len(msg))
				}
				other := sha256.Sum256(append(msg, 0))
				if ecdsa.VerifyASN1(ec, other[:], sig) {
					t.Fatal("signature verifies for another message")
				}
			}
		})
	}
	signing, _ := h.PublicKey(ctx, SigningKeyLabel)
	ca, _ := h.PublicKey(ctx, CAKeyLabel)
	if bytes.Equal(signing, ca) {
		t.Error("signing and CA keys are the same key")
	}
	if _, err := h.SignSHA256(ctx, "no-such-pair", []byte("x")); !errors.Is(err, ErrHierarchyMissing) {
		t.Errorf("SignSHA256 with an unknown label = %v", err)
	}
	// Another HSM on the same token finds the same persistent key.
	other, err := Open(ctx, h.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if again, err := other.PublicKey(ctx, SigningKeyLabel); err != nil || !bytes.Equal(again, signing) {
		t.Errorf("PublicKey from a second HSM on the token differs (%v)", err)
	}
}

func TestSignerCertificate(t *testing.T) {
	h := newHierarchyHSM(t)
	ctx := t.Context()
	signer, err := h.Signer(ctx, CAKeyLabel)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sovkeys test CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, signer.Public(), signer)
	if err != nil {
		t.Fatalf("CreateCertificate (CA): %v", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	if err := caCert.CheckSignatureFrom(caCert); err != nil {
		t.Fatalf("CA certificate signature: %v", err)
	}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "i-0123456789abcdef0"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(30 * time.Minute),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, alg := range []x509.SignatureAlgorithm{x509.ECDSAWithSHA256, x509.ECDSAWithSHA384} {
		leafTmpl.SignatureAlgorithm = alg
		leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, signer)
		if err != nil {
			t.Fatalf("CreateCertificate (leaf, %v): %v", alg, err)
		}
		leaf, _ := x509.ParseCertificate(leafDER)
		roots := x509.NewCertPool()
		roots.AddCert(caCert)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("leaf signed with %v does not verify: %v", alg, err)
		}
	}
	for _, tc := range []struct {
		name   string
		digest []byte
		opts   crypto.SignerOpts
	}{
		{"sha-512", make([]byte, 64), crypto.SHA512},
		{"short digest", make([]byte, 20), crypto.SHA256},
	} {
		if _, err := signer.Sign(rand.Reader, tc.digest, tc.opts); err == nil {
			t.Errorf("Sign with %s succeeded", tc.name)
		}
	}
}
