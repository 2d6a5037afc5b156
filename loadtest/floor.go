package main

// The floor: what answering XKS encrypt and decrypt costs on this machine
// with nothing of sovkeys but the parts every XKS proxy needs. Same TLS
// setup as the gateway, the same SigV4 check (services/authn's verifier),
// the same body parser and AAD binding (shared/api/xks), and AES-256-GCM in
// software: no mesh, no HSM, no audit. sovkeys' closed-loop throughput
// divided by the floor's, measured in the same run on the same machine, is
// the figure that travels between machines (docs/BENCHMARKS.md).
//
//	loadtest floor -listen 127.0.0.1:18444 -cert DATA/tls/cert.pem -key DATA/tls/key.pem -creds-json ks.json

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/services/authn"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
)

// floorConfig is one floor server.
type floorConfig struct {
	Listen      string
	CertFile    string
	KeyFile     string
	Prefix      string // key store URI prefix, without slashes
	AccessKeyID string
	Secret      string
	AllowRemote bool
}

func (c floorConfig) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: floor: "+format, append([]any{ErrConfigValidation}, args...)...)
	}
	host, _, err := net.SplitHostPort(c.Listen)
	switch {
	case err != nil:
		return bad("-listen: %v", err)
	case !c.AllowRemote && !isLoopbackHost(host):
		return bad("-listen %q is not a loopback address; pass -allow-remote", c.Listen)
	case c.CertFile == "" || c.KeyFile == "":
		return bad("-cert and -key are required (the gateway's DATA/tls/cert.pem and key.pem)")
	case c.Prefix != "" && !xks.ValidPrefix(c.Prefix):
		return bad("-prefix %q is not a valid key store prefix", c.Prefix)
	case c.AccessKeyID == "" || c.Secret == "":
		return bad("credentials required: -creds-json FILE, or -access-key-id and -secret")
	}
	return nil
}

// runFloor is `loadtest floor`: serve until ctx ends.
func runFloor(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadtest floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c floorConfig
	var credsJSON string
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:18444", "address to serve HTTPS on")
	fs.StringVar(&c.CertFile, "cert", "", "TLS certificate PEM `FILE` (the gateway's DATA/tls/cert.pem)")
	fs.StringVar(&c.KeyFile, "key", "", "TLS private key PEM `FILE` (the gateway's DATA/tls/key.pem)")
	fs.StringVar(&c.Prefix, "prefix", "", "key store URI prefix (default: uriPrefix of -creds-json)")
	fs.StringVar(&c.AccessKeyID, "access-key-id", "", "SigV4 access key id")
	fs.StringVar(&c.Secret, "secret", getenv("SOVKEYS_XKS_SECRET"), "SigV4 secret (env SOVKEYS_XKS_SECRET)")
	fs.StringVar(&credsJSON, "creds-json", "", "JSON `FILE` printed by 'sovkeys xks keystore create'")
	fs.BoolVar(&c.AllowRemote, "allow-remote", false, "allow a listen address that is not loopback")
	fs.Usage = func() {
		fmt.Fprint(stderr, "loadtest floor - a bare XKS server (TLS, SigV4, software AES-GCM) to measure sovkeys against\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if credsJSON != "" {
		var lc Config
		if err := lc.applyCreds(credsJSON, set); err != nil {
			fmt.Fprintf(stderr, "loadtest: %v\n", err)
			return 2
		}
		if !set["prefix"] {
			c.Prefix = lc.Prefix
		}
		if !set["access-key-id"] {
			c.AccessKeyID = lc.AccessKeyID
		}
		if !set["secret"] {
			c.Secret = lc.Secret
		}
	}
	c.Prefix = strings.Trim(c.Prefix, "/")
	if err := c.validate(); err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return 2
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: floor: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "loadtest floor: serving XKS on https://%s (prefix %q)\n", ln.Addr(), c.Prefix)
	if err := serveFloor(ctx, ln, c, stderr); err != nil {
		fmt.Fprintf(stderr, "loadtest: floor: %v\n", err)
		return 1
	}
	return 0
}

// serveFloor serves the floor on ln until ctx ends.
func serveFloor(ctx context.Context, ln net.Listener, c floorConfig, errLog io.Writer) error {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	f, err := newFloor(c)
	if err != nil {
		return err
	}
	// The gateway's server settings (services/gateway/service.go).
	srv := &http.Server{
		Handler:           f,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(errLog, "loadtest floor: ", 0),
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequestClientCert,
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

// floor answers XKS metadata, encrypt and decrypt for any key id of one key
// store, with one software AES-256 key.
type floor struct {
	prefix   string
	creds    []authn.Credential
	verifier authn.SigV4Verifier
	aead     cipher.AEAD
}

func newFloor(c floorConfig) (*floor, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &floor{
		prefix:   c.Prefix,
		creds:    []authn.Credential{{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.Secret}},
		verifier: authn.SigV4Verifier{Service: authn.DefaultSigV4Service, MaxSkew: authn.DefaultMaxSkew, Now: time.Now},
		aead:     aead,
	}, nil
}

// floorKeyVersion is the key version every floor ciphertext names.
const floorKeyVersion = 1

func (f *floor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := f.answer(r)
	if err != nil {
		writeFloorError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// answer does what the gateway, authn and a keyworker do together, minus
// the mesh, the HSM and the audit record.
func (f *floor) answer(r *http.Request) ([]byte, error) {
	route, err := xks.ParsePath(r.URL.EscapedPath())
	if err != nil {
		return nil, err
	}
	if route.Prefix != f.prefix {
		return nil, shared.NewError(shared.CodeInvalidURIPath, "no key store at this uri prefix")
	}
	if r.Method != http.MethodPost {
		return nil, shared.NewError(shared.CodeMethodNotAllowed, "method %s not allowed; use POST", r.Method)
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, xks.MaxBodyBytes))
	if err != nil {
		return nil, shared.NewError(shared.CodeValidation, "cannot read request body")
	}
	in := authn.SigV4Input{Method: r.Method, RawPath: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
		Host: r.Host, Header: r.Header, Body: body}
	if _, err := f.verifier.Verify(in, f.creds); err != nil {
		return nil, err
	}
	switch route.Op {
	case xks.OpMetadata:
		if _, err := xks.ParseMetadata(body); err != nil {
			return nil, err
		}
		return json.Marshal(xks.MetadataResponse{KeySpec: "AES_256", KeyUsage: []string{"ENCRYPT", "DECRYPT"}, KeyStatus: xks.KeyStatusEnabled})
	case xks.OpEncrypt:
		return f.encrypt(body)
	case xks.OpDecrypt:
		return f.decrypt(body)
	}
	return nil, shared.NewError(shared.CodeUnsupportedOperation, "the floor serves metadata, encrypt and decrypt only")
}

func (f *floor) encrypt(body []byte) ([]byte, error) {
	req, err := xks.ParseEncrypt(body)
	if err != nil {
		return nil, err
	}
	md := xks.EncodeKeyVersion(floorKeyVersion)
	iv := make([]byte, xks.IVBytes)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	sealed := f.aead.Seal(nil, iv, req.Plaintext, xks.EncodeAAD(req.AdditionalAuthenticatedData, md))
	n := len(sealed) - xks.TagBytes
	resp := xks.EncryptResponse{Ciphertext: sealed[:n], AuthenticationTag: sealed[n:], InitializationVector: iv, CiphertextMetadata: md}
	if req.CiphertextDataIntegrityValueAlgorithm != "" {
		resp.CiphertextDataIntegrityValue = xks.CDIV(req.AdditionalAuthenticatedData, md, iv, resp.Ciphertext, resp.AuthenticationTag)
	}
	return json.Marshal(resp)
}

func (f *floor) decrypt(body []byte) ([]byte, error) {
	req, err := xks.ParseDecrypt(body)
	if err != nil {
		return nil, err
	}
	if v, err := xks.DecodeKeyVersion(req.CiphertextMetadata); err != nil || v != floorKeyVersion {
		return nil, shared.NewError(shared.CodeInvalidCiphertext, "ciphertextMetadata was not written by this floor")
	}
	if len(req.InitializationVector) != xks.IVBytes {
		return nil, shared.NewError(shared.CodeInvalidCiphertext, "the floor uses %d-byte IVs", xks.IVBytes)
	}
	sealed := append(req.Ciphertext, req.AuthenticationTag...)
	pt, err := f.aead.Open(sealed[:0], req.InitializationVector, sealed, xks.EncodeAAD(req.AdditionalAuthenticatedData, req.CiphertextMetadata))
	if err != nil {
		return nil, shared.NewError(shared.CodeInvalidCiphertext, "authentication tag does not match")
	}
	return json.Marshal(xks.DecryptResponse{Plaintext: pt})
}

// writeFloorError answers an XKS error with the gateway's status and
// errorName (xks.StatusOf).
func writeFloorError(w http.ResponseWriter, err error) {
	status, name := xks.StatusOf(shared.CodeOf(err))
	b, _ := json.Marshal(xks.ErrorResponse{ErrorName: name, ErrorMessage: shared.MessageOf(err)})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
