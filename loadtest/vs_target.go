package main

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
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
)

// Errors of a volume-secret answer that arrived but cannot be used.
var (
	errUnwrap         = errors.New("loadtest: wrapped_secret does not unwrap with the one-time RSA key")
	errSecretMismatch = errors.New("loadtest: decrypt-secret returned another secret than generate-secret")
)

// secretBytes is the size of a volume secret (docs/volume-secrets.md).
const secretBytes = 32

// preflightWait bounds how long prepare retries the first call while a
// freshly created tenant or instance CA reaches authn's caches.
const preflightWait = 15 * time.Second

// wrapKey is one one-time RSA wrapping key and its DER SubjectPublicKeyInfo.
type wrapKey struct {
	priv *rsa.PrivateKey
	der  []byte
}

// vsSealed is one volume's encrypted_secret and the secret it holds.
type vsSealed struct {
	inst      int // the instance that made it (and decrypts it)
	volume    string
	encrypted []byte
	secret    []byte
}

// vsInstance is one instance the load is spread over: its id and a client
// presenting its certificate.
type vsInstance struct {
	id   string
	http *http.Client
	key  crypto.Signer // signs each request (RFC 9421), as instances do
}

// vsTarget calls the volume-secret API as one or more instances (-instances,
// request i as instance i mod N), over mutual TLS, and
// checks every answer as the instance would: signatures against the pinned
// key, the wrapped secret unwrapped with the one-time key. It calls the HTTP
// API itself with the shared/api/vs types because vsclient makes a new RSA key
// per call, which is the instance's cost and not what is measured here.
type vsTarget struct {
	insts      []vsInstance
	baseURL    string
	op         string
	signing    *ecdsa.PublicKey
	signingDER []byte
	wrap       []wrapKey
	keygen     time.Duration
	keepAlive  bool
	poolSize   int
	poolPar    int
	pool       []vsSealed
	checks     histogram // client-side verify + unwrap per successful answer
}

// newVSTarget loads the instance's files and makes the wrapping keys.
func newVSTarget(ctx context.Context, cfg Config, tc *tls.Config, progress io.Writer) (*vsTarget, error) {
	der, pub, err := readSigningKey(cfg.SigningKeyFile)
	if err != nil {
		return nil, err
	}
	t := &vsTarget{
		baseURL: strings.TrimRight(cfg.URL, "/"), op: cfg.Op,
		signing: pub, signingDER: der, keepAlive: cfg.KeepAlive,
		poolSize: cfg.PoolSize, poolPar: min(cfg.workers(), 32),
	}
	n := max(cfg.Instances, 1)
	for i := range n {
		cert, err := tls.LoadX509KeyPair(instanceFile(cfg.CertFile, i, n), instanceFile(cfg.KeyFile, i, n))
		if err != nil {
			return nil, fmt.Errorf("%w: -cert/-key: %v", ErrConfigValidation, err)
		}
		itc := tc.Clone()
		itc.Certificates = []tls.Certificate{cert}
		key, _ := cert.PrivateKey.(crypto.Signer)
		t.insts = append(t.insts, vsInstance{
			id: instanceFile(cfg.InstanceID, i, n), key: key,
			http: newHTTPClient(itc, max(1, cfg.workers()/n), 0, cfg.Timeout, cfg.KeepAlive),
		})
	}
	fmt.Fprintf(progress, "loadtest: making %d one-time RSA-%d wrapping keys (not measured)\n", cfg.WrapKeys, cfg.RSABits)
	start := time.Now()
	t.wrap = make([]wrapKey, cfg.WrapKeys)
	err = forEach(ctx, cfg.WrapKeys, runtime.GOMAXPROCS(0), func(_ context.Context, i int) error {
		k, err := rsa.GenerateKey(rand.Reader, cfg.RSABits)
		if err != nil {
			return err
		}
		k.Precompute()
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return err
		}
		t.wrap[i] = wrapKey{priv: k, der: der}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("making wrapping keys: %w", err)
	}
	t.keygen = time.Since(start)
	return t, nil
}

// readSigningKey reads the PEM SPKI `sovkeys instance issue-cert` writes.
func readSigningKey(path string) ([]byte, *ecdsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: -signing-key: %v", ErrConfigValidation, err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, nil, fmt.Errorf("%w: -signing-key %s holds no PEM PUBLIC KEY", ErrConfigValidation, path)
	}
	pub, err := vsclient.ParseSigningKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: -signing-key %s: %v", ErrConfigValidation, path, err)
	}
	return block.Bytes, pub, nil
}

// prepare checks that the gateway publishes the pinned signing key and that
// the instance may call, then makes the decrypt pool when the run decrypts.
func (t *vsTarget) prepare(ctx context.Context, progress io.Writer) error {
	der, err := vsclient.FetchSigningKey(ctx, t.insts[0].http, t.baseURL)
	if err != nil {
		return fmt.Errorf("preflight GET /v1/public-signing-key: %w", err)
	}
	if !bytes.Equal(der, t.signingDER) {
		return errors.New("preflight: the gateway publishes another signing key than -signing-key (wrong node, or a stale certificate directory)")
	}
	firsts := make([]vsSealed, len(t.insts))
	for i := range t.insts {
		if firsts[i], err = t.firstGenerate(ctx, i); err != nil {
			return fmt.Errorf("preflight generate-secret as %q: %w", t.insts[i].id, err)
		}
	}
	if t.op == OpGenerate {
		return nil
	}
	fmt.Fprintf(progress, "loadtest: generating %d encrypted_secrets for decrypt (a fresh volume_uuid each)\n", t.poolSize)
	t.pool = make([]vsSealed, max(t.poolSize, len(t.insts)))
	copy(t.pool, firsts)
	err = forEach(ctx, len(t.pool)-len(firsts), t.poolPar, func(ctx context.Context, i int) error {
		j := i + len(firsts)
		s, err := t.generate(ctx, j%len(t.insts), t.wrap[j%len(t.wrap)])
		t.pool[j] = s
		return err
	})
	if err != nil {
		return fmt.Errorf("making the decrypt pool: %w", err)
	}
	return nil
}

// firstGenerate makes one secret, retrying for a while on the answers a
// just-created tenant or instance CA gives until authn has seen it.
func (t *vsTarget) firstGenerate(ctx context.Context, inst int) (vsSealed, error) {
	ctx, cancel := context.WithTimeout(ctx, preflightWait)
	defer cancel()
	for {
		s, err := t.generate(ctx, inst, t.wrap[0])
		var ae *vsclient.APIError
		if err == nil || !errors.As(err, &ae) {
			return s, err
		}
		switch ae.Status {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests, http.StatusServiceUnavailable:
		default:
			return s, err
		}
		select {
		case <-ctx.Done():
			return s, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// do sends request number seq. mixed alternates generate and decrypt.
func (t *vsTarget) do(ctx context.Context, seq uint64) (string, error) {
	op, idx := t.op, seq
	if op == OpMixed {
		op, idx = OpGenerate, seq/2
		if seq%2 == 1 {
			op = OpDecrypt
		}
	}
	key := t.wrap[seq%uint64(len(t.wrap))]
	if op == OpGenerate {
		_, err := t.generate(ctx, int(seq%uint64(len(t.insts))), key)
		return op, err
	}
	s := &t.pool[idx%uint64(len(t.pool))]
	secret, err := t.decrypt(ctx, key, s)
	if err == nil && !bytes.Equal(secret, s.secret) {
		err = errSecretMismatch
	}
	return op, err
}

// generate asks for the secret of a new volume and checks the answer.
func (t *vsTarget) generate(ctx context.Context, inst int, key wrapKey) (vsSealed, error) {
	volume := newVolumeUUID()
	var out vs.GenerateResponse
	if err := t.post(ctx, inst, vs.OpGenerate, vs.GenerateRequest{RSAWrappingKey: key.der, VolumeUUID: volume}, &out); err != nil {
		return vsSealed{}, err
	}
	start := time.Now()
	if err := t.verify(out.EncryptedSecret, out.EncryptedSecretSignature); err != nil {
		return vsSealed{}, err
	}
	secret, err := t.unwrap(key, out.WrappedSecret, out.WrappedSecretSignature)
	if err != nil {
		return vsSealed{}, err
	}
	t.checks.Record(time.Since(start))
	return vsSealed{inst: inst, volume: volume, encrypted: out.EncryptedSecret, secret: secret}, nil
}

// decrypt recovers the secret of s's volume and checks the answer.
func (t *vsTarget) decrypt(ctx context.Context, key wrapKey, s *vsSealed) ([]byte, error) {
	var out vs.DecryptResponse
	req := vs.DecryptRequest{EncryptedSecret: s.encrypted, RSAWrappingKey: key.der, VolumeUUID: s.volume}
	if err := t.post(ctx, s.inst, vs.OpDecrypt, req, &out); err != nil {
		return nil, err
	}
	start := time.Now()
	secret, err := t.unwrap(key, out.WrappedSecret, out.WrappedSecretSignature)
	if err != nil {
		return nil, err
	}
	t.checks.Record(time.Since(start))
	return secret, nil
}

// verify checks an ECDSA signature (DER, over SHA-256 of blob) against the
// pinned signing key.
func (t *vsTarget) verify(blob, sig []byte) error {
	sum := sha256.Sum256(blob)
	if len(blob) == 0 || !ecdsa.VerifyASN1(t.signing, sum[:], sig) {
		return vsclient.ErrBadSignature
	}
	return nil
}

// unwrap verifies the wrapped secret's signature and decrypts it with the
// one-time key (RSA-OAEP, SHA-256 and MGF1-SHA-256, no label).
func (t *vsTarget) unwrap(key wrapKey, wrapped, sig []byte) ([]byte, error) {
	if err := t.verify(wrapped, sig); err != nil {
		return nil, err
	}
	secret, err := rsa.DecryptOAEP(sha256.New(), nil, key.priv, wrapped, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUnwrap, err)
	}
	if len(secret) != secretBytes {
		return nil, fmt.Errorf("%w: secret of %d bytes, want %d", errBadResponse, len(secret), secretBytes)
	}
	return secret, nil
}

// post sends one call as the instance and decodes a 200 answer into out;
// any other status is a *vsclient.APIError.
func (t *vsTarget) post(ctx context.Context, inst int, op vs.Op, body, out any) error {
	err := vsclient.PostSigned(ctx, t.insts[inst].http, t.baseURL, t.insts[inst].id, op, body, out, t.insts[inst].key)
	var se *json.SyntaxError
	var ue *json.UnmarshalTypeError
	if errors.As(err, &se) || errors.As(err, &ue) {
		return fmt.Errorf("%w: %v", errBadResponse, err)
	}
	return err
}

// newVolumeUUID is a random (version 4) UUID: every generate-secret names a
// volume the service has never seen.
func newVolumeUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// addVS puts what only a volume-secret run knows into the report.
func (rep *Report) addVS(t *vsTarget) {
	rep.VS = &VSReport{
		Instance: t.insts[0].id, Instances: len(t.insts), WrapKeys: len(t.wrap), RSABits: t.wrap[0].priv.N.BitLen(),
		NewConnEach: !t.keepAlive, KeygenMillis: t.keygen.Milliseconds(), ClientChecks: summarize(&t.checks),
	}
}

// instanceFile is pattern for instance i of n: with -instances above 1,
// "%d" in -cert, -key and -instance stands for the instance's number.
func instanceFile(pattern string, i, n int) string {
	if n <= 1 {
		return pattern
	}
	return strings.ReplaceAll(pattern, "%d", strconv.Itoa(i))
}

// closeIdle closes every instance's idle connections.
func (t *vsTarget) closeIdle() {
	for _, in := range t.insts {
		in.http.CloseIdleConnections()
	}
}
