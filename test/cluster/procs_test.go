package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/testkit"
)

// proc is one OS process of the deployment, restartable with the same
// command line.
type proc struct {
	name string
	bin  string
	args []string
	env  []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	stderr *syncBuffer
}

// logDirEnv names a folder that receives every process's output
// (<name>.log), with the services logging at info: the gateways' "slow
// answer" lines then tell where a slow request spent its time.
const logDirEnv = "SOVKEYS_CLUSTER_LOGDIR"

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 { // keep the tail
		s.b.Reset()
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stderr == nil {
		p.stderr = &syncBuffer{}
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stderr, cmd.Stdout = p.stderr, p.stderr
	var logFile *os.File
	if dir := os.Getenv(logDirEnv); dir != "" && p.name != "" {
		// Every process's output also goes to <dir>/<name>.log (appended
		// across restarts), for reading after the run.
		if f, err := os.OpenFile(filepath.Join(dir, p.name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600); err == nil {
			w := io.MultiWriter(p.stderr, f)
			cmd.Stderr, cmd.Stdout = w, w
			logFile = f
		}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		if logFile != nil {
			_ = logFile.Close()
		}
		close(done)
	}()
	p.cmd, p.done = cmd, done
}

// kill9 kills the process without warning and waits for it.
func (p *proc) kill9() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// stop ends the process gracefully (SIGTERM, then SIGKILL).
func (p *proc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// freePortBase finds a port base with the 3 x 3 ports of a 3-node cluster free.
func freePortBase(t *testing.T) int {
	return testkit.FreePortBase(t, 0, 1, 2, 100, 101, 102, 200, 201, 202)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// repoRoot is the module root (this package is test/cluster).
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(filepath.Dir(wd))
}

// buildBinaries builds sovkeys and (once, cached) nats-server from the
// version pinned in go.mod.
func buildBinaries(t *testing.T, dir string) (sovkeys, natsServer string) {
	t.Helper()
	root := repoRoot(t)
	sovkeys = filepath.Join(dir, "sovkeys")
	build := exec.Command("go", "build", "-o", sovkeys, "./cmd/sovkeys")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build sovkeys: %v\n%s", err, out)
	}
	if p := os.Getenv("SOVKEYS_NATS_SERVER"); p != "" {
		return sovkeys, p
	}
	inst := exec.Command(filepath.Join(root, "scripts", "install-nats-server.sh"))
	inst.Dir = root
	var stderr bytes.Buffer
	inst.Stderr = &stderr
	out, err := inst.Output()
	if err != nil {
		t.Fatalf("install-nats-server.sh: %v\n%s", err, stderr.String())
	}
	return sovkeys, strings.TrimSpace(string(out))
}

// softHSMToken makes one SoftHSM token in dir that every keyworker shares.
func softHSMToken(t *testing.T, dir, label, pin string) (conf string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf = filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "so-"+pin, "--pin", pin)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v\n%s", err, out)
	}
	return conf
}

// httpsClient trusts the test deployment's gateway CA.
func httpsClient(t *testing.T, caFile string, timeout time.Duration) *http.Client {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 64,
	}}
}

func healthy(ctx context.Context, hc *http.Client, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s healthz %d", addr, resp.StatusCode)
	}
	return nil
}
