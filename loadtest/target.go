package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
	"github.com/sovkeys/sovkeys/shared/client/xksclient"
)

// Errors a response can earn besides the gateway's own XKS errors.
var (
	errBadResponse = errors.New("loadtest: malformed response")
	errMismatch    = errors.New("loadtest: decrypt returned other plaintext")
	// errCutOff marks a request still out when the run's own time limit
	// (schedule end + -timeout + grace) expired.
	errCutOff = errors.New("loadtest: cut off at the run's time limit")
)

// loadTarget is one API under load: prepare runs once before the load
// (preflight checks, pools), do sends request number seq and names the
// operation it sent.
type loadTarget interface {
	prepare(ctx context.Context, progress io.Writer) error
	do(ctx context.Context, seq uint64) (op string, err error)
}

var (
	_ loadTarget = (*target)(nil)
	_ loadTarget = (*vsTarget)(nil)
)

// tlsConfig is TLS 1.2 or later, trusting only caFile when given.
func tlsConfig(caFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%w: -ca: %v", ErrConfigValidation, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: -ca %s holds no PEM certificate", ErrConfigValidation, caFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// newHTTPClient is an HTTPS client over tc. With keepAlive it keeps an idle
// connection for every worker; without, every request opens (and closes)
// its own TLS connection. conns > 0 bounds the connections: requests past
// them wait for one, as behind a client's connection pool.
func newHTTPClient(tc *tls.Config, workers, conns int, timeout time.Duration, keepAlive bool) *http.Client {
	tr := &http.Transport{
		Proxy:               nil, // never route load through an HTTP(S)_PROXY
		DialContext:         (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: timeout,
		DisableKeepAlives:   !keepAlive,
		MaxIdleConns:        workers + 16,
		MaxIdleConnsPerHost: workers + 16,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
		// HTTP/1.1, as KMS talks to an XKS proxy: one connection per
		// outstanding request.
		ForceAttemptHTTP2: false,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// sealed is one pre-encrypted plaintext for decrypt requests.
type sealed struct {
	plaintext []byte
	resp      xks.EncryptResponse
}

// target wraps the shared XKS client with what one run sends: the key, the
// plaintexts and AAD, and the pool of ciphertexts to decrypt.
type target struct {
	client     *xksclient.Client
	keyID      string
	op         string
	aad        []byte
	plaintexts [][]byte
	pool       []sealed
	poolSize   int // ciphertexts to make for decrypt
	poolPar    int // at most this many at once
}

// numPlaintexts distinct plaintexts are cycled through by encrypt requests.
const numPlaintexts = 16

func newTarget(c *xksclient.Client, cfg Config) *target {
	t := &target{client: c, keyID: cfg.KeyID, op: cfg.Op, poolSize: cfg.PoolSize, poolPar: min(cfg.workers(), 32)}
	if cfg.AADSize > 0 {
		t.aad = randomBytes(cfg.AADSize)
	}
	for range numPlaintexts {
		t.plaintexts = append(t.plaintexts, randomBytes(cfg.Size))
	}
	return t
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// prepare checks the key store and key, then fills the decrypt pool when
// the run decrypts.
func (t *target) prepare(ctx context.Context, progress io.Writer) error {
	if err := t.preflight(ctx); err != nil {
		return err
	}
	if t.op == OpEncrypt {
		return nil
	}
	fmt.Fprintf(progress, "loadtest: pre-encrypting %d ciphertexts for decrypt\n", t.poolSize)
	return t.fillPool(ctx, t.poolSize, t.poolPar)
}

// preflight makes one metadata call so bad credentials, a wrong prefix or
// key, or an unreachable gateway fail the run before any load is sent.
func (t *target) preflight(ctx context.Context) error {
	md, err := t.client.Metadata(ctx, t.keyID)
	if err != nil {
		return fmt.Errorf("preflight GetKeyMetadata %q: %w", t.keyID, err)
	}
	if md.KeyStatus != xks.KeyStatusEnabled {
		return fmt.Errorf("preflight: key %q is %s", t.keyID, md.KeyStatus)
	}
	return nil
}

// fillPool encrypts size plaintexts with up to par requests at once.
func (t *target) fillPool(ctx context.Context, size, par int) error {
	t.pool = make([]sealed, size)
	err := forEach(ctx, size, par, func(ctx context.Context, i int) error {
		pt := randomBytes(len(t.plaintexts[0]))
		resp, err := t.encryptOnce(ctx, pt)
		if err != nil {
			return err
		}
		t.pool[i] = sealed{plaintext: pt, resp: *resp}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pre-encrypting the decrypt pool: %w", err)
	}
	return nil
}

// forEach calls f for 0..n-1 with up to par calls at once and returns the
// first error (or ctx's). It stops handing out work once ctx is done.
func forEach(ctx context.Context, n, par int, f func(ctx context.Context, i int) error) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	next := make(chan int)
	for range max(1, min(par, n)) {
		wg.Go(func() {
			for i := range next {
				if err := f(ctx, i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// do sends request number seq.
func (t *target) do(ctx context.Context, seq uint64) (op string, err error) {
	op = t.op
	if op == OpMixed {
		op = OpEncrypt
		if seq%2 == 1 {
			op = OpDecrypt
		}
	}
	if op == OpEncrypt {
		_, err = t.encryptOnce(ctx, t.plaintexts[seq%uint64(len(t.plaintexts))])
		return op, err
	}
	s := &t.pool[seq%uint64(len(t.pool))]
	pt, err := t.client.Decrypt(ctx, t.keyID, &s.resp, t.aad)
	if err == nil && !bytes.Equal(pt, s.plaintext) {
		err = errMismatch
	}
	return op, err
}

func (t *target) encryptOnce(ctx context.Context, pt []byte) (*xks.EncryptResponse, error) {
	resp, err := t.client.Encrypt(ctx, t.keyID, pt, t.aad, false)
	if err != nil {
		return nil, err
	}
	if len(resp.Ciphertext) != len(pt) || len(resp.AuthenticationTag) != xks.TagBytes ||
		(len(resp.InitializationVector) != xks.IVBytes && len(resp.InitializationVector) != xks.IVLongBytes) {
		return nil, errBadResponse
	}
	return resp, nil
}

// classify names an error for the report: "HTTP <status> <errorName>" for
// an XKS error answer, "HTTP <status> <status text>" for a volume-secret one
// (its message, which may name ids, stays in the sample), a short class
// otherwise.
// isRefusal reports whether err is the server refusing for load or state:
// an answered 429 or 503.
func isRefusal(err error) bool {
	var ae *xksclient.APIError
	var ve *vsclient.APIError
	switch {
	case errors.As(err, &ae):
		return ae.Status == http.StatusTooManyRequests || ae.Status == http.StatusServiceUnavailable
	case errors.As(err, &ve):
		return ve.Status == http.StatusTooManyRequests || ve.Status == http.StatusServiceUnavailable
	}
	return false
}

func classify(err error) string {
	var ae *xksclient.APIError
	var ve *vsclient.APIError
	var ne net.Error
	switch {
	case errors.Is(err, errCutOff):
		return "cut off at run time limit"
	case errors.As(err, &ae):
		name := ae.Name
		if name == "" {
			name = "(no errorName)"
		}
		return fmt.Sprintf("HTTP %d %s", ae.Status, name)
	case errors.As(err, &ve):
		return fmt.Sprintf("HTTP %d %s", ve.Status, http.StatusText(ve.Status))
	case errors.Is(err, vsclient.ErrBadSignature):
		return "bad signature"
	case errors.Is(err, errUnwrap):
		return "unwrap failed"
	case errors.Is(err, errSecretMismatch):
		return "secret mismatch"
	case errors.Is(err, errBadResponse):
		return "malformed response"
	case errors.Is(err, errMismatch):
		return "plaintext mismatch"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed (EOF)"
	}
	var ce *tls.CertificateVerificationError
	if errors.As(err, &ce) {
		return "tls certificate"
	}
	return "transport error"
}
