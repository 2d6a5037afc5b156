package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/client/xksclient"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// node is one `sovkeys standalone` started in-process for the whole test
// binary: a real embedded JetStream server, a real SoftHSM token, all four
// services talking over NATS.
type node struct {
	dir     string
	gateway string // https://127.0.0.1:port
	natsURL string
	creds   string
	http    *http.Client
	stop    context.CancelFunc
	done    chan int
	stderr  *syncBuffer
	stdout  *syncBuffer
	// shares are the HSM unseal shares printed at the first start.
	shares []string
}

var testNode *node

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startNode starts a standalone node on dir. A restarted node comes up
// sealed; it is unsealed with shares, as an operator would.
func startNode(dir string, shares []string, extra ...string) (*node, error) {
	gwPort, err := freePort()
	if err != nil {
		return nil, err
	}
	natsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{
		dir: dir, gateway: fmt.Sprintf("https://127.0.0.1:%d", gwPort),
		natsURL: fmt.Sprintf("nats://127.0.0.1:%d", natsPort), creds: filepath.Join(dir, "operators", "admin.creds"),
		stop: cancel, done: make(chan int, 1), stderr: &syncBuffer{}, stdout: &syncBuffer{},
	}
	args := []string{"standalone", "--data", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", gwPort),
		"--nats-listen", fmt.Sprintf("127.0.0.1:%d", natsPort), "--log-level", "warn",
		// A generous deadline: the suite shares small, busy machines and must
		// not turn a slow scheduler into a failed assertion.
		"--request-timeout", testRequestTimeout.String()}
	args = append(args, extra...)
	env := awsTestEnv() // aws_e2e_test.go: the loopback STS/EC2 (and trusted proxy) this node uses
	getenv := func(k string) string {
		if v, ok := env[k]; ok {
			return v
		}
		return os.Getenv(k)
	}
	go func() { n.done <- run(ctx, args, getenv, n.stdout, n.stderr) }()

	// Trust only the node's own CA, as a client would.
	exited := func() error {
		select {
		case code := <-n.done:
			n.done <- code
			return fmt.Errorf("standalone exited %d: %s", code, n.stderr.String())
		default:
			return nil
		}
	}
	var pool *x509.CertPool
	if err := setupCheckFor(nodeStartTimeout, 50*time.Millisecond, func() error {
		if err := exited(); err != nil {
			return err
		}
		pem, err := os.ReadFile(filepath.Join(dir, "tls", "ca.pem"))
		if err != nil {
			return fmt.Errorf("no tls/ca.pem: %v", err)
		}
		pool = x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		return nil
	}); err != nil {
		cancel()
		return nil, err
	}
	if shares != nil {
		n.shares = shares
		args := []string{"unseal"}
		for _, s := range shares[:2] {
			args = append(args, "--share", s)
		}
		if err := setupCheckFor(nodeStartTimeout, 100*time.Millisecond, func() error { return n.cliErr(nil, args...) }); err != nil {
			cancel()
			return nil, fmt.Errorf("unseal: %v", err)
		}
	} else {
		for _, l := range strings.Split(n.stdout.String(), "\n") {
			if l = strings.TrimSpace(l); strings.HasPrefix(l, "sovkeys-share:") {
				n.shares = append(n.shares, l)
			}
		}
		if len(n.shares) < 2 {
			cancel()
			return nil, fmt.Errorf("no unseal shares printed at first start: %s", n.stdout.String())
		}
	}
	n.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 64,
	}}
	if err := setupCheckFor(nodeStartTimeout, 100*time.Millisecond, func() error {
		if err := exited(); err != nil {
			return err
		}
		resp, err := n.http.Get(n.gateway + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz %d", resp.StatusCode)
		}
		return nil
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("%v: %s", err, n.stderr.String())
	}
	return n, nil
}

func (n *node) shutdown() int {
	n.stop()
	select {
	case code := <-n.done:
		return code
	case <-time.After(30 * time.Second):
		return -1
	}
}

func (n *node) getenv(k string) string {
	switch k {
	case "SOVKEYS_NATS_URL":
		return n.natsURL
	case "SOVKEYS_NATS_CREDS":
		return n.creds
	}
	return ""
}

// cli runs an operator command against the node and decodes its JSON output.
func (n *node) cli(t testing.TB, out any, args ...string) {
	t.Helper()
	if err := n.cliErr(out, args...); err != nil {
		t.Fatalf("sovkeys %s: %v", strings.Join(args, " "), err)
	}
}

func (n *node) cliErr(out any, args ...string) error {
	return n.cliAs(n.creds, out, args...)
}

// cliAs runs an operator command with the credential file creds (a
// person's) and decodes its JSON output.
func (n *node) cliAs(creds string, out any, args ...string) error {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), args, getenvAs(n, creds), &stdout, &stderr); code != 0 {
		return fmt.Errorf("exit %d: %s", code, stderr.String())
	}
	if out != nil {
		if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
			return fmt.Errorf("output %q: %v", stdout.String(), err)
		}
	}
	return nil
}

type keystoreCreds struct {
	URIPrefix       string `json:"uriPrefix"`
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
}

// newKeystore creates a key store and returns a client for it.
func (n *node) newKeystore(t testing.TB, prefix string) (*xksclient.Client, keystoreCreds) {
	t.Helper()
	var c keystoreCreds
	n.cli(t, &c, "xks", "keystore", "create", "--prefix", prefix)
	return n.client(c), c
}

func (n *node) client(c keystoreCreds) *xksclient.Client {
	return &xksclient.Client{BaseURL: n.gateway, Prefix: c.URIPrefix, AccessKeyID: c.AccessKeyID, Secret: c.SecretAccessKey, HTTP: n.http}
}

// nodeStartTimeout bounds each step of starting a standalone node.
const nodeStartTimeout = 60 * time.Second

// testRequestTimeout is the end-to-end request deadline of test nodes.
const testRequestTimeout = 5 * time.Second

// setupTB lets testkit.CheckFor run where there is no test yet (TestMain):
// Fatalf records the error instead of stopping a test.
type setupTB struct {
	testing.TB
	err error
}

func (s *setupTB) Helper() {}
func (s *setupTB) Fatalf(format string, args ...any) {
	s.err = fmt.Errorf(format, args...)
}

// setupCheckFor is testkit.CheckFor returning its failure as an error.
func setupCheckFor(total, every time.Duration, f func() error) error {
	tb := &setupTB{}
	testkit.CheckFor(tb, total, every, f)
	return tb.err
}

// getenvAs is n's environment with the credential creds.
func getenvAs(n *node, creds string) func(string) string {
	return func(k string) string {
		if k == "SOVKEYS_NATS_CREDS" {
			return creds
		}
		return n.getenv(k)
	}
}
