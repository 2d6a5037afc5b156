package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// A tenant that requires request signatures (RFC 9421 with the instance
// key) serves the signing client and refuses an unsigned request, one
// signed by another key, a signature over another body and a replay, each
// with the instance's own TLS certificate (so only the signature differs).
func TestVolumeSecretsRequestSignatures(t *testing.T) {
	n := testNode
	ctx := context.Background()
	n.cli(t, nil, "tenant", "create", "--id", "vpc-sig", "--require-request-signatures")
	c := n.instanceClient(t, "vpc-sig", "i-sig")
	if c.Key == nil {
		t.Fatal("vsclient.New did not keep the instance key")
	}
	if _, _, err := c.GenerateSecret(ctx, "i-sig", "vol-sig"); err != nil {
		t.Fatalf("signed request: %v", err)
	}
	wrap, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(&wrap.PublicKey)
	body, _ := json.Marshal(vs.GenerateRequest{RSAWrappingKey: spki, VolumeUUID: "vol-sig-2"})
	path := "/v1/encryption/i-sig/generate-secret"
	send := func(b []byte, h http.Header) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.gateway+path, bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = h.Clone()
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		msg, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(msg)
	}
	signed := func(key crypto.Signer, b []byte) http.Header {
		h := http.Header{}
		if err := vs.SignRequest(h, http.MethodPost, path, b, key, time.Now()); err != nil {
			t.Fatal(err)
		}
		return h
	}
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := signed(c.Key, body)
	otherBody, _ := json.Marshal(vs.GenerateRequest{RSAWrappingKey: spki, VolumeUUID: "vol-sig-3"})
	for what, tc := range map[string]struct {
		body []byte
		h    http.Header
	}{
		"unsigned":          {body, http.Header{}},
		"another key":       {body, signed(stranger, body)},
		"signed other body": {otherBody, good},
	} {
		if code, msg := send(tc.body, tc.h); code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", what, code, msg)
		}
	}
	if code, msg := send(body, good); code != http.StatusOK {
		t.Fatalf("first use of a good signature: %d %s", code, msg)
	}
	if code, msg := send(body, good); code != http.StatusUnauthorized || !strings.Contains(msg, "replayed") {
		t.Fatalf("replay: %d %s, want 401 replayed", code, msg)
	}
	// The volume-secret routes accept TLS 1.3 only.
	old := c.HTTP.Transport.(*http.Transport).TLSClientConfig.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: old}}
	resp, err := hc.Post(n.gateway+path, "application/json", bytes.NewReader(body))
	if err == nil {
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("a TLS 1.2 volume-secret request was served")
		}
	}
}

// `instance issue-cert --csr`: the key is made on the instance (as
// `sk-agent enroll` does) and never reaches the operator; the certificate
// issued for it serves signed requests. A CSR whose signature does not
// verify is refused.
func TestIssueCertFromCSR(t *testing.T) {
	n := testNode
	ctx := context.Background()
	n.cli(t, nil, "tenant", "create", "--id", "vpc-csr", "--require-request-signatures")
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csrFile := filepath.Join(dir, "req.pem")
	if err := os.WriteFile(csrFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	n.cli(t, nil, "instance", "issue-cert", "--tenant", "vpc-csr", "--instance", "i-csr", "--out", out, "--csr", csrFile)
	if _, err := os.Stat(filepath.Join(out, "key.pem")); !os.IsNotExist(err) {
		t.Fatalf("issue-cert --csr wrote a key: %v", err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(dir, "instance-key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	spki, _ := os.ReadFile(filepath.Join(out, "signing-key.pem"))
	block, _ := pem.Decode(spki)
	c, err := vsclient.New(vsclient.Config{BaseURL: n.gateway, CertFile: filepath.Join(out, "cert.pem"), KeyFile: keyFile,
		CAFile: filepath.Join(n.dir, "tls", "ca.pem"), SigningKeyDER: block.Bytes})
	if err != nil {
		t.Fatal(err)
	}
	c.RSABits = 2048
	if _, _, err := c.GenerateSecret(ctx, "i-csr", "vol-csr"); err != nil {
		t.Fatalf("signed request with the enrolled key: %v", err)
	}
	// A CSR over another key's signature: refused, nothing issued.
	bad := append([]byte(nil), csr...)
	bad[len(bad)-5] ^= 0xff
	if err := os.WriteFile(csrFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: bad}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.cliErr(nil, "instance", "issue-cert", "--tenant", "vpc-csr", "--instance", "i-csr2", "--out", filepath.Join(dir, "out2"), "--csr", csrFile); err == nil {
		t.Fatal("a CSR with a broken signature was signed")
	}
}

// An insider with the gateway's NATS credential and everything public about
// an instance (its certificate, an encrypted secret and volume uuid from
// its disk) forges the envelope the gateway would send: authn refuses it
// without the instance key's signature, and a captured signed request
// cannot be replayed.
func TestStolenGatewayCredentialGetsNoVolumeSecret(t *testing.T) {
	n := testNode
	ctx := context.Background()
	n.cli(t, nil, "tenant", "create", "--id", "vpc-victim")
	victim := n.instanceClient(t, "vpc-victim", "i-victim")
	_, enc, err := victim.GenerateSecret(ctx, "i-victim", "vol-victim")
	if err != nil {
		t.Fatal(err)
	}
	leaf := victim.HTTP.Transport.(*http.Transport).TLSClientConfig.Certificates[0].Certificate[0] // public
	gw, err := nats.Connect(n.natsURL, nats.UserCredentials(filepath.Join(n.dir, "creds", "gateway.creds")),
		nats.CustomInboxPrefix(shared.InboxPrefix(shared.UserGateway)))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	js, err := jetstream.New(gw)
	if err != nil {
		t.Fatal(err)
	}
	replies := shared.ReplySubjectPrefix(shared.UserGateway) + "forged"
	sub, err := gw.SubscribeSync(replies)
	if err != nil {
		t.Fatal(err)
	}
	wrap, _ := rsa.GenerateKey(rand.Reader, 2048)
	spki, _ := x509.MarshalPKIXPublicKey(&wrap.PublicKey)
	body, _ := json.Marshal(vs.DecryptRequest{EncryptedSecret: enc, RSAWrappingKey: spki, VolumeUUID: "vol-victim"})
	path := "/v1/encryption/i-victim/decrypt-secret"
	forge := func(id string, h map[string][]string) error {
		t.Helper()
		now := time.Now()
		env := &shared.Envelope{Version: shared.EnvelopeVersion, ID: id, API: shared.APIVSDecrypt,
			Received: now, Deadline: now.Add(5 * time.Second), ReplyTo: replies,
			Evidence: shared.Evidence{SourceIP: "10.0.0.9", Method: http.MethodPost, Path: path, InstanceID: "i-victim",
				ClientCerts: [][]byte{leaf}, Header: h},
			Body: body}
		data, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, shared.RequestSubject(shared.APIVSDecrypt), data, jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return mesh.ReplyErr(m)
	}
	stamp := fmt.Sprint(time.Now().UnixNano())
	if err := forge("forged-unsigned-"+stamp, nil); shared.CodeOf(err) != shared.CodeAuthenticationFailed {
		t.Fatalf("forged unsigned envelope: %v, want AuthenticationFailed", err)
	}
	// A request the instance signed (captured on the way) goes through once.
	h := http.Header{}
	if err := vs.SignRequest(h, http.MethodPost, path, body, victim.Key, time.Now()); err != nil {
		t.Fatal(err)
	}
	captured := map[string][]string{}
	for _, k := range []string{vs.HeaderContentDigest, vs.HeaderSignatureInput, vs.HeaderSignature} {
		captured[k] = h.Values(k)
	}
	if err := forge("signed-"+stamp, captured); err != nil {
		t.Fatalf("first use of the instance's signed request: %v", err)
	}
	if err := forge("replayed-"+stamp, captured); shared.CodeOf(err) != shared.CodeAuthenticationFailed {
		t.Fatalf("replayed signed request: %v, want AuthenticationFailed", err)
	}
}

// A tenant without the setting (as every tenant stored before 2026-12-07:
// the field is absent, which is what =false writes) keeps serving unsigned
// requests, and still checks a signature that is present.
func TestTenantWithoutSignatureSettingAcceptsUnsigned(t *testing.T) {
	n := testNode
	ctx := context.Background()
	var tn map[string]any
	n.cli(t, &tn, "tenant", "create", "--id", "vpc-old", "--require-request-signatures=false")
	if _, ok := tn["require_request_signatures"]; ok {
		t.Fatalf("the record names the setting: %v", tn)
	}
	c := n.instanceClient(t, "vpc-old", "i-old")
	key := c.Key
	c.Key = nil // an older client: no signature
	if _, _, err := c.GenerateSecret(ctx, "i-old", "vol-old"); err != nil {
		t.Fatalf("unsigned request on a tenant without the setting: %v", err)
	}
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c.Key = stranger
	if _, _, err := c.GenerateSecret(ctx, "i-old", "vol-old-2"); vsStatus(err) != http.StatusUnauthorized {
		t.Fatalf("a bad signature on such a tenant: %v, want 401", err)
	}
	c.Key = key
	if _, _, err := c.GenerateSecret(ctx, "i-old", "vol-old-3"); err != nil {
		t.Fatalf("signed request: %v", err)
	}
}
