// Package vsclient is the instance-side client of the volume-secret API: it
// makes a one-time RSA key per call, calls the gateway over mutual TLS,
// verifies every signature against a pinned service signing key, unwraps
// the secret, and zeroes key material it owns after use.
package vsclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared/api/vs"
)

// ErrBadSignature means a blob's signature did not verify against the
// pinned signing key: the answer is not from the service and is discarded.
var ErrBadSignature = errors.New("vsclient: signature does not verify against the pinned signing key")

// APIError is an error answer of the service.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("vsclient: %d: %s", e.Status, e.Message) }

// Client calls the volume-secret API as one instance.
type Client struct {
	BaseURL    string           // https://host:port
	HTTP       *http.Client     // carries the instance's client certificate
	SigningKey *ecdsa.PublicKey // pinned service signing key
	// RSABits is the size of the one-time wrapping key (default 3072).
	RSABits int
	// Key, when set, is the instance's private key (its certificate's):
	// every request is signed with it (vs.SignRequest, RFC 9421), which a
	// tenant with require_request_signatures demands.
	Key crypto.Signer
}

// Config names the files a client needs.
type Config struct {
	BaseURL  string
	CertFile string // instance certificate (PEM)
	KeyFile  string // instance private key (PEM)
	CAFile   string // trust anchor of the gateway's TLS certificate (PEM)
	// SigningKeyDER is the pinned service signing key (DER SPKI), obtained
	// out of band (e.g. GET /v1/public-signing-key at enrolment).
	SigningKeyDER []byte
}

// New builds a client from files.
func New(cfg Config) (*Client, error) {
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("vsclient: client certificate: %w", err)
	}
	tlsCfg, err := clientTLS(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	tlsCfg.Certificates = []tls.Certificate{cert}
	pub, err := ParseSigningKey(cfg.SigningKeyDER)
	if err != nil {
		return nil, err
	}
	key, _ := cert.PrivateKey.(crypto.Signer)
	return &Client{
		BaseURL:    strings.TrimRight(cfg.BaseURL, "/"),
		HTTP:       &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}},
		SigningKey: pub,
		Key:        key,
	}, nil
}

// clientTLS is the TLS configuration of every client: TLS 1.3 (the
// volume-secret routes accept nothing older, 2026-12-07), trusting
// caFile when given (else the system roots).
func clientTLS(caFile string) (*tls.Config, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if caFile == "" {
		return tlsCfg, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("vsclient: ca: %w", err)
	}
	tlsCfg.RootCAs = x509.NewCertPool()
	if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
		return nil, errors.New("vsclient: ca file holds no certificate")
	}
	return tlsCfg, nil
}

// ParseSigningKey parses a DER SPKI ECDSA public key.
func ParseSigningKey(der []byte) (*ecdsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("vsclient: signing key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("vsclient: signing key is not ECDSA")
	}
	return ek, nil
}

// FetchSigningKey reads GET /v1/public-signing-key (for enrolment: pin the
// result; never trust a key fetched at the time of use).
func FetchSigningKey(ctx context.Context, hc *http.Client, baseURL string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(baseURL, "/")+"/v1/public-signing-key", nil)
	if err != nil {
		return nil, err
	}
	var out vs.PublicKeyResponse
	if err := do(hc, req, &out); err != nil {
		return nil, err
	}
	return out.PublicKey, nil
}

func (c *Client) verify(blob, sig []byte) error {
	sum := sha256.Sum256(blob)
	if !ecdsa.VerifyASN1(c.SigningKey, sum[:], sig) {
		return ErrBadSignature
	}
	return nil
}

func (c *Client) oneTimeKey() (*rsa.PrivateKey, []byte, error) {
	bits := c.RSABits
	if bits == 0 {
		bits = 3072
	}
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	return k, der, nil
}

// zero overwrites the private parts of a one-time key (best effort: math/big
// may have copied limbs during computation).
func zero(k *rsa.PrivateKey) {
	if k == nil {
		return
	}
	clear(k.D.Bits())
	for _, p := range k.Primes {
		clear(p.Bits())
	}
	if k.Precomputed.Dp != nil {
		clear(k.Precomputed.Dp.Bits())
		clear(k.Precomputed.Dq.Bits())
		clear(k.Precomputed.Qinv.Bits())
	}
}

func (c *Client) post(ctx context.Context, instanceID string, op vs.Op, body, out any) error {
	return PostSigned(ctx, c.HTTP, c.BaseURL, instanceID, op, body, out, c.Key)
}

// Post sends one volume-secret call as instanceID and decodes a 200 answer
// into out; any other status is an *APIError. It does no signature checks.
func Post(ctx context.Context, hc *http.Client, baseURL, instanceID string, op vs.Op, body, out any) error {
	return PostSigned(ctx, hc, baseURL, instanceID, op, body, out, nil)
}

// PostSigned is Post with the request signed by key (nil: unsigned).
func PostSigned(ctx context.Context, hc *http.Client, baseURL, instanceID string, op vs.Op, body, out any, key crypto.Signer) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/v1/encryption/"+instanceID+"/"+string(op), bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != nil {
		if err := vs.SignRequest(req.Header, http.MethodPost, req.URL.EscapedPath(), data, key, time.Now()); err != nil {
			return fmt.Errorf("vsclient: request signature: %w", err)
		}
	}
	return do(hc, req, out)
}

func do(hc *http.Client, req *http.Request, out any) error {
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e vs.ErrorResponse
		_ = json.Unmarshal(b, &e)
		return &APIError{Status: resp.StatusCode, Message: e.Message}
	}
	return json.Unmarshal(b, out)
}

// unwrap verifies the signature of a wrapped secret and decrypts it.
func (c *Client) unwrap(k *rsa.PrivateKey, wrapped, sig []byte) ([]byte, error) {
	if err := c.verify(wrapped, sig); err != nil {
		return nil, err
	}
	secret, err := rsa.DecryptOAEP(sha256.New(), nil, k, wrapped, nil)
	if err != nil {
		return nil, fmt.Errorf("vsclient: unwrap secret: %w", err)
	}
	return secret, nil
}

// GenerateSecret asks for a new volume secret. It returns the secret (the
// caller must clear it after use) and the encrypted_secret to store on the
// volume.
func (c *Client) GenerateSecret(ctx context.Context, instanceID, volumeUUID string) (secret, encryptedSecret []byte, err error) {
	k, der, err := c.oneTimeKey()
	if err != nil {
		return nil, nil, err
	}
	defer zero(k)
	var out vs.GenerateResponse
	if err := c.post(ctx, instanceID, vs.OpGenerate, vs.GenerateRequest{RSAWrappingKey: der, VolumeUUID: volumeUUID}, &out); err != nil {
		return nil, nil, err
	}
	if err := c.verify(out.EncryptedSecret, out.EncryptedSecretSignature); err != nil {
		return nil, nil, err
	}
	secret, err = c.unwrap(k, out.WrappedSecret, out.WrappedSecretSignature)
	if err != nil {
		return nil, nil, err
	}
	return secret, out.EncryptedSecret, nil
}

// DecryptSecret recovers the secret of a volume from its encrypted_secret.
func (c *Client) DecryptSecret(ctx context.Context, instanceID, volumeUUID string, encryptedSecret []byte) ([]byte, error) {
	k, der, err := c.oneTimeKey()
	if err != nil {
		return nil, err
	}
	defer zero(k)
	var out vs.DecryptResponse
	if err := c.post(ctx, instanceID, vs.OpDecrypt, vs.DecryptRequest{EncryptedSecret: encryptedSecret, RSAWrappingKey: der, VolumeUUID: volumeUUID}, &out); err != nil {
		return nil, err
	}
	return c.unwrap(k, out.WrappedSecret, out.WrappedSecretSignature)
}

// ConvertSecret takes ownership of a volume restored from another instance
// of the same tenant; it returns the new encrypted_secret.
func (c *Client) ConvertSecret(ctx context.Context, instanceID, sourceInstanceID, volumeUUID string, encryptedSecret []byte) ([]byte, error) {
	var out vs.ConvertResponse
	if err := c.post(ctx, instanceID, vs.OpConvert, vs.ConvertRequest{
		EncryptedSecret: encryptedSecret, VolumeUUID: volumeUUID, SourceInstanceID: sourceInstanceID,
	}, &out); err != nil {
		return nil, err
	}
	if err := c.verify(out.EncryptedSecret, out.EncryptedSecretSignature); err != nil {
		return nil, err
	}
	return out.EncryptedSecret, nil
}
