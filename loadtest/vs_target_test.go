package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/api/vs"
)

// fakeVS is a volume-secret endpoint over real mutual TLS with a real
// ECDSA P-384 signing key and real RSA-OAEP wrapping. Its encrypted_secret
// is the volume uuid and the secret in clear (the fake has no HSM); decrypt
// refuses a blob presented for another volume, as the service does.
type fakeVS struct {
	srv         *httptest.Server
	dir         string // cert.pem, key.pem, signing-key.pem, ca.pem
	signer      *ecdsa.PrivateKey
	generates   atomic.Int64
	decrypts    atomic.Int64
	conns       atomic.Int64
	noCert      atomic.Int64
	badSigEvery int64        // every n-th answer carries a broken signature
	forbidUntil atomic.Int64 // calls answered 403 first, as before authn sees a new tenant
	volumes     sync.Map     // volume uuid -> true: each generate must name a new one
	wrapKeys    sync.Map     // DER SPKI seen -> true
	dupVolumes  atomic.Int64
}

func newFakeVS(t *testing.T) *fakeVS {
	t.Helper()
	f := &fakeVS{dir: t.TempDir()}
	var err error
	if f.signer, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	f.srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(f.dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", f.srv.Certificate().Raw)
	pub, err := x509.MarshalPKIXPublicKey(&f.signer.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	write("signing-key.pem", "PUBLIC KEY", pub)
	// The instance certificate: self-signed is enough, the fake only
	// checks that one is presented.
	ik, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "i-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ik.PublicKey, ik)
	if err != nil {
		t.Fatal(err)
	}
	write("cert.pem", "CERTIFICATE", cert)
	keyDER, err := x509.MarshalPKCS8PrivateKey(ik)
	if err != nil {
		t.Fatal(err)
	}
	write("key.pem", "PRIVATE KEY", keyDER)
	return f
}

func (f *fakeVS) sign(blob []byte, n int64) []byte {
	sum := sha256.Sum256(blob)
	sig, _ := ecdsa.SignASN1(rand.Reader, f.signer, sum[:])
	if f.badSigEvery > 0 && n%f.badSigEvery == 0 {
		sig[len(sig)-1] ^= 1
	}
	return sig
}

func (f *fakeVS) fail(w http.ResponseWriter, status int, msg string) {
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(vs.ErrorResponse{Message: msg})
}

func (f *fakeVS) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/v1/public-signing-key" {
		der, _ := x509.MarshalPKIXPublicKey(&f.signer.PublicKey)
		_ = json.NewEncoder(w).Encode(vs.PublicKeyResponse{PublicKey: der})
		return
	}
	if len(r.TLS.PeerCertificates) == 0 {
		f.noCert.Add(1)
		f.fail(w, http.StatusUnauthorized, "a client certificate is required")
		return
	}
	if f.forbidUntil.Add(-1) >= 0 {
		f.fail(w, http.StatusForbidden, `tenant "vpc-test" is not registered`)
		return
	}
	body, _ := io.ReadAll(r.Body)
	instance, op, err := vs.ParsePath(r.URL.Path)
	if err != nil || instance != "i-test" {
		f.fail(w, http.StatusForbidden, "path names another instance")
		return
	}
	switch op {
	case vs.OpGenerate:
		req, pub, err := vs.ParseGenerate(body)
		if err != nil {
			f.fail(w, http.StatusBadRequest, err.Error())
			return
		}
		n := f.generates.Add(1)
		if _, dup := f.volumes.LoadOrStore(req.VolumeUUID, true); dup {
			f.dupVolumes.Add(1)
		}
		f.wrapKeys.Store(string(req.RSAWrappingKey), true)
		secret := make([]byte, secretBytes)
		_, _ = rand.Read(secret)
		enc := append([]byte(req.VolumeUUID+"|"), secret...)
		wrapped, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, secret, nil)
		_ = json.NewEncoder(w).Encode(vs.GenerateResponse{EncryptedSecret: enc, EncryptedSecretSignature: f.sign(enc, n),
			WrappedSecret: wrapped, WrappedSecretSignature: f.sign(wrapped, n)})
	case vs.OpDecrypt:
		req, pub, err := vs.ParseDecrypt(body)
		if err != nil {
			f.fail(w, http.StatusBadRequest, err.Error())
			return
		}
		n := f.decrypts.Add(1)
		volume, secret, ok := bytes.Cut(req.EncryptedSecret, []byte("|"))
		if !ok || string(volume) != req.VolumeUUID {
			f.fail(w, http.StatusBadRequest, "the secret is bound to another context")
			return
		}
		wrapped, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, secret, nil)
		_ = json.NewEncoder(w).Encode(vs.DecryptResponse{WrappedSecret: wrapped, WrappedSecretSignature: f.sign(wrapped, n)})
	default:
		f.fail(w, http.StatusNotFound, "no such resource")
	}
}

// args are the flags of a volume-secret run against f capped at n requests.
// 2048-bit wrapping keys keep the tests fast.
func (f *fakeVS) args(n int, extra ...string) []string {
	return append([]string{"-api", "vs", "-url", f.srv.URL, "-ca", filepath.Join(f.dir, "ca.pem"),
		"-cert", filepath.Join(f.dir, "cert.pem"), "-key", filepath.Join(f.dir, "key.pem"),
		"-signing-key", filepath.Join(f.dir, "signing-key.pem"), "-instance", "i-test",
		"-wrap-keys", "3", "-rsa-bits", "2048",
		"-warmup", "0s", "-duration", "1m", "-max-requests", strconv.Itoa(n)}, extra...)
}

func TestVSGenerateChecksEveryAnswer(t *testing.T) {
	t.Parallel()
	f := newFakeVS(t)
	f.forbidUntil.Store(3) // the preflight waits for authn to see the tenant
	rep, _, text := runReport(t, t.Context(), f.args(30, "-concurrency", "4"))
	if rep.API != "vs" || rep.Op != "generate" || rep.Requests != 30 || rep.ErrorCount != 0 {
		t.Fatalf("api %q op %q requests %d errors %+v", rep.API, rep.Op, rep.Requests, rep.Errors)
	}
	if got := f.generates.Load(); got != 31 { // preflight + 30
		t.Errorf("generates %d, want 31", got)
	}
	if n := f.dupVolumes.Load(); n != 0 {
		t.Errorf("%d generate calls reused a volume_uuid", n)
	}
	keys := 0
	f.wrapKeys.Range(func(any, any) bool { keys++; return true })
	if keys != 3 {
		t.Errorf("%d distinct wrapping keys used, want the 3 made before the run", keys)
	}
	if f.noCert.Load() != 0 {
		t.Error("a call came without the instance certificate")
	}
	// One new TLS connection per call (the preflight GET and 3 refused
	// calls included) unless -keepalive.
	if got := f.conns.Load(); got != 35 {
		t.Errorf("%d TLS connections for 35 calls", got)
	}
	if rep.VS == nil || rep.VS.WrapKeys != 3 || rep.VS.RSABits != 2048 || !rep.VS.NewConnEach || rep.VS.ClientChecks.Count != 31 {
		t.Errorf("vs report = %+v", rep.VS)
	}
	for _, want := range []string{"/v1/encryption/i-test", "RSA-2048", "client work", "a new TLS connection per call"} {
		if !strings.Contains(text, want) {
			t.Errorf("text report lacks %q:\n%s", want, text)
		}
	}
}

func TestVSDecryptOpenLoopWithKeepAlive(t *testing.T) {
	t.Parallel()
	f := newFakeVS(t)
	rep, _, _ := runReport(t, t.Context(), f.args(40, "-op", "decrypt", "-rate", "2000", "-pool", "5", "-keepalive", "-max-inflight", "4"))
	if rep.Mode != "open" || rep.Requests != 40 || rep.ErrorCount != 0 || rep.Unsent != 0 {
		t.Fatalf("mode %q requests %d errors %+v unsent %d", rep.Mode, rep.Requests, rep.Errors, rep.Unsent)
	}
	if g, d := f.generates.Load(), f.decrypts.Load(); g != 5 || d != 40 {
		t.Errorf("generates %d decrypts %d, want 5 (the pool) and 40", g, d)
	}
	if c := f.conns.Load(); c > 8 {
		t.Errorf("%d TLS connections with -keepalive and 4 workers", c)
	}
}

func TestVSMixedAndBadSignatures(t *testing.T) {
	t.Parallel()
	f := newFakeVS(t)
	f.badSigEvery = 7
	// The preflight generate is the 1st; the pool needs no more (-pool 1).
	rep, code, _ := runReport(t, t.Context(), f.args(40, "-op", "mixed", "-concurrency", "2", "-pool", "1"))
	if rep.ByOp["generate"].Requests != 20 || rep.ByOp["decrypt"].Requests != 20 {
		t.Errorf("byOp = %+v", rep.ByOp)
	}
	// Generate answers 7, 14 and 21 (the preflight was the 1st) and decrypt
	// answers 7 and 14 carry broken signatures.
	if rep.ErrorCount != 5 || code != 1 {
		t.Errorf("errors %d (%+v), exit %d; want 5 bad signatures", rep.ErrorCount, rep.Errors, code)
	}
	if len(rep.Errors) != 1 || rep.Errors[0].Kind != "bad signature" {
		t.Errorf("errors = %+v", rep.Errors)
	}
}

func TestVSPreflightRefusesOtherSigningKey(t *testing.T) {
	t.Parallel()
	f := newFakeVS(t)
	other, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	pinned := filepath.Join(t.TempDir(), "signing-key.pem")
	if err := os.WriteFile(pinned, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run(t.Context(), f.args(10, "-signing-key", pinned), func(string) string { return "" }, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "another signing key") {
		t.Errorf("exit %d stderr %q", code, errb.String())
	}
	if f.generates.Load() != 0 {
		t.Error("load was sent after a failed preflight")
	}
}

func TestVSWrongVolumeIsAnError(t *testing.T) {
	t.Parallel()
	f := newFakeVS(t)
	// A decrypt presented for another volume than the blob's: the service's
	// 400 is counted as such, not hidden.
	cfg, err := parseConfig(f.args(1), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tlsConfig(cfg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	v, err := newVSTarget(t.Context(), cfg, tc, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s, err := v.generate(t.Context(), 0, v.wrap[0])
	if err != nil {
		t.Fatal(err)
	}
	s.volume = newVolumeUUID()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = v.decrypt(ctx, v.wrap[1], &s)
	if got := classify(err); got != "HTTP 400 Bad Request" {
		t.Errorf("classify(%v) = %q", err, got)
	}
}

func TestNewVolumeUUID(t *testing.T) {
	t.Parallel()
	a, b := newVolumeUUID(), newVolumeUUID()
	if a == b || len(a) != 36 || a[14] != '4' || !vs.ValidID(a) {
		t.Errorf("uuids %q %q", a, b)
	}
}
