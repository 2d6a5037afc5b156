// Package s3test runs a real S3 server (versitygw, posix backend) on
// loopback for a test. The binary is installed by `make versitygw`
// (scripts/install-versitygw.sh); a test fails, never skips, when it is
// missing.
package s3test

import (
	"context"
	"errors"
	"fmt"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"net"
	"net/http"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Credentials and region of every test server.
const (
	AccessKey = "sovkeystestaccess"
	SecretKey = "sovkeys-test-secret-key-0123456789"
	Region    = "us-east-1"
)

const (
	binaryName   = "versitygw"
	startTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
)

// Server is a versitygw process serving S3 on 127.0.0.1. Stop and Start
// simulate an outage: a restarted server listens on the same address and
// serves the same data. Call its methods from the test goroutine.
type Server struct {
	t          testing.TB
	bin        string
	addr       string // 127.0.0.1:port
	root       string // posix backend root: one directory per bucket
	versionDir string // where the posix backend keeps object versions
	posixArgs  []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	logs *tailBuffer
}

// Run starts a server and returns its endpoint, credentials and a stop
// function (also run by t.Cleanup).
func Run(t testing.TB) (endpoint, accessKey, secret string, stop func()) {
	t.Helper()
	s := RunServer(t)
	return s.Endpoint(), AccessKey, SecretKey, s.Stop
}

// RunServer starts a server with its data in t.TempDir(); t.Cleanup stops it.
// posixArgs are extra flags for the posix backend (e.g. "--nometa").
func RunServer(t testing.TB, posixArgs ...string) *Server {
	t.Helper()
	bin, err := findBinary()
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	s := &Server{t: t, bin: bin, root: t.TempDir(), versionDir: t.TempDir(), posixArgs: posixArgs, logs: &tailBuffer{max: 16 << 10}}
	t.Cleanup(s.Stop)
	// A free port can be taken between probing and versitygw's bind; retry.
	for attempt := 0; ; attempt++ {
		s.addr = freeAddr(t)
		err := s.start()
		if err == nil {
			return s
		}
		if attempt == 2 {
			t.Fatalf("s3test: start versitygw: %v\n%s", err, s.logs)
		}
	}
}

// Endpoint is the server's base URL, e.g. http://127.0.0.1:39123.
func (s *Server) Endpoint() string { return "http://" + s.addr }

// Start restarts a stopped server on the same address and data directory.
// It is a no-op while the server runs.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("s3test: restart versitygw on %s: %v\n%s", s.addr, err, s.logs)
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s). Idempotent.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Client returns an S3 client for the server (path-style addressing).
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       Region,
		BaseEndpoint: aws.String(s.Endpoint()),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
	})
}

// CreateBucket creates a bucket through the S3 API, with versioning enabled
// when asked.
func (s *Server) CreateBucket(ctx context.Context, t testing.TB, bucket string, versioned bool) {
	t.Helper()
	c := s.Client()
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatalf("s3test: create bucket %s: %v", bucket, err)
	}
	if !versioned {
		return
	}
	_, err := c.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{
		Bucket:                  aws.String(bucket),
		VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled},
	})
	if err != nil {
		t.Fatalf("s3test: enable versioning on %s: %v", bucket, err)
	}
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	args := []string{
		"--access", AccessKey, "--secret", SecretKey, "--region", Region,
		"--port", s.addr, "--quiet",
		"posix", "--versioning-dir", s.versionDir,
	}
	args = append(append(args, s.posixArgs...), s.root)
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout = s.logs
	cmd.Stderr = s.logs
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	if err := waitReady(s.Endpoint(), done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		return err
	}
	s.cmd, s.done = cmd, done
	return nil
}

// waitReady polls until the server answers HTTP (any status: an anonymous
// request gets 403), or the process exits, or startTimeout passes.
func waitReady(endpoint string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("versitygw exited during startup")
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw not answering on %s after %s: %w", endpoint, startTimeout, err)
		}
	}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("s3test: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// findBinary looks in PATH, then $(go env GOPATH)/bin, then <repo>/bin.
func findBinary() (string, error) {
	return testkit.FindBinary(binaryName, "install it with `make versitygw` (scripts/install-versitygw.sh)")
}

// tailBuffer keeps the last max bytes written to it, for failure messages.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) == 0 {
		return "(versitygw wrote no output)"
	}
	return "versitygw output (tail):\n" + string(b.buf)
}
