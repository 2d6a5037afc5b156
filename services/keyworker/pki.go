package keyworker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// publishPKI creates the pool's key hierarchy if needed and publishes its
// public parts in KV: the signing public key and the instance CA
// certificate (self-signed by the HSM CA key, created once per pool).
func (s *Service) publishPKI(ctx context.Context) error {
	if err := s.ensureHierarchyLocked(ctx); err != nil {
		return err
	}
	kv, err := mesh.EnsureBucket(ctx, s.js, shared.BucketPKI, "sovkeys: public keys and CA certificates", s.cfg.Topology)
	if err != nil {
		return err
	}
	signing, err := s.hsm.PublicKey(ctx, hsm.SigningKeyLabel)
	if err != nil {
		return err
	}
	if err := s.pinKeys(ctx, kv, signing); err != nil { // answers.go: write-once, pinned
		return err
	}
	caPub, err := s.hsm.PublicKey(ctx, hsm.CAKeyLabel)
	if err != nil {
		return err
	}
	if e, err := kv.Get(ctx, shared.PKIInstanceCA(s.cfg.Pool)); err == nil {
		c, perr := x509.ParseCertificate(e.Value())
		if perr != nil || !bytes.Equal(c.RawSubjectPublicKeyInfo, caPub) {
			// Fail closed: certificates issued by another key must not be
			// silently re-trusted or silently dropped.
			return fmt.Errorf("keyworker: the published instance CA of pool %q does not match this HSM's CA key", s.cfg.Pool)
		}
		s.caCert = c
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("keyworker: read instance CA: %w", err)
	}
	der, err := s.selfSignCA(ctx)
	if err != nil {
		return err
	}
	if _, err := kv.Create(ctx, shared.PKIInstanceCA(s.cfg.Pool), der); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("keyworker: publish instance CA: %w", err)
	}
	e, err := kv.Get(ctx, shared.PKIInstanceCA(s.cfg.Pool))
	if err != nil {
		return fmt.Errorf("keyworker: read instance CA: %w", err)
	}
	if s.caCert, err = x509.ParseCertificate(e.Value()); err != nil {
		return fmt.Errorf("keyworker: instance CA: %w", err)
	}
	s.log.Info("instance CA published")
	return nil
}

func serialNumber() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func (s *Service) selfSignCA(ctx context.Context) ([]byte, error) {
	signer, err := s.hsm.Signer(ctx, hsm.CAKeyLabel)
	if err != nil {
		return nil, err
	}
	now := s.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(),
		Subject:               pkix.Name{CommonName: "sovkeys instance CA (" + s.cfg.Pool + ")", Organization: []string{"sovkeys"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("keyworker: self-sign instance CA: %w", err)
	}
	return der, nil
}

// adminIssueCert issues an instance client certificate signed by the HSM CA key.
func (s *Service) adminIssueCert(ctx context.Context, data []byte) (any, error) {
	var req kwadmin.IssueCertRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return nil, shared.NewError(shared.CodeValidation, "malformed admin request")
	}
	if !registry.ValidTenantID(req.Tenant) || !vs.ValidID(req.Instance) {
		return nil, shared.NewError(shared.CodeValidation, "invalid tenant or instance id")
	}
	if req.Days < 1 || req.Days > 825 {
		return nil, shared.NewError(shared.CodeValidation, "validity must be 1-825 days")
	}
	pub, err := x509.ParsePKIXPublicKey(req.PublicKey)
	if err != nil {
		return nil, shared.NewError(shared.CodeValidation, "public key is not a DER SubjectPublicKeyInfo")
	}
	if s.caCert == nil {
		return nil, shared.NewError(shared.CodeInvalidState, "instance CA not ready")
	}
	signer, err := s.hsm.Signer(ctx, hsm.CAKeyLabel)
	if err != nil {
		return nil, err
	}
	now := s.now()
	uri, _ := url.Parse("sovkeys://tenant/" + req.Tenant + "/instance/" + req.Instance)
	tmpl := &x509.Certificate{
		SerialNumber: serialNumber(),
		Subject:      pkix.Name{CommonName: req.Instance, Organization: []string{req.Tenant}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.AddDate(0, 0, req.Days),
		URIs:         []*url.URL{uri},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.caCert, pub, signer)
	if err != nil {
		return nil, shared.NewError(shared.CodeValidation, "cannot issue a certificate for this key: %v", err)
	}
	s.log.Info("instance certificate issued", "tenant", req.Tenant, "instance", req.Instance, "days", req.Days)
	return kwadmin.IssueCertResponse{Certificate: der, CA: s.caCert.Raw}, nil
}
