package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/client/vsclient"
)

// These tests run the real thing: a `sovkeys standalone` node (embedded
// JetStream, SoftHSM) and the sk-agent binary as separate processes, real
// sgdisk and cryptsetup (LUKS2) on loop devices over file images. They
// need root; they skip, saying why, when root or a tool is missing.

var (
	skipReason string
	bins       struct{ sovkeys, agent string }
	node       *testNode
)

type testNode struct {
	dir, gateway, natsURL string
	cmd                   *exec.Cmd
	stderr                bytes.Buffer
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	skipReason = prerequisites()
	if skipReason != "" {
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "sk-agent-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	bins.sovkeys, bins.agent = filepath.Join(tmp, "sovkeys"), filepath.Join(tmp, "sk-agent")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	// The node needs cgo (PKCS#11); the agent is built as shipped: static.
	for _, b := range []struct{ out, pkg, cgo string }{{bins.sovkeys, "../sovkeys", "1"}, {bins.agent, ".", "0"}} {
		out, pkg := b.out, b.pkg
		cmd := exec.Command(goBin, "build", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	node, err = startNode(filepath.Join(tmp, "node"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start standalone:", err)
		return 1
	}
	code := m.Run()
	_ = node.cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- node.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = node.cmd.Process.Kill()
	}
	return code
}

// prerequisites returns why the device tests cannot run here, or "".
func prerequisites() string {
	if os.Geteuid() != 0 {
		return "sk-agent device tests need root (loop devices, cryptsetup): run as root"
	}
	for _, tool := range []string{"losetup", "cryptsetup", "sgdisk", "softhsm2-util"} {
		if _, err := lookTool(tool); err != nil {
			return tool + " is not installed (make deps installs cryptsetup, gdisk, softhsm2)"
		}
	}
	return ""
}

func lookTool(name string) (string, error) { return testkit.LookTool(name) }

func fileExists(p string) bool { return testkit.FileExists(p) }

// dmUsable reports whether device-mapper works here: its control node
// opens (cryptsetup creates the node even where the kernel has none).
func dmUsable() bool {
	f, err := os.OpenFile("/dev/mapper/control", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func needDevices(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startNode(dir string) (*testNode, error) {
	gw, err := freePort()
	if err != nil {
		return nil, err
	}
	np, err := freePort()
	if err != nil {
		return nil, err
	}
	n := &testNode{dir: dir, gateway: fmt.Sprintf("https://127.0.0.1:%d", gw), natsURL: fmt.Sprintf("nats://127.0.0.1:%d", np)}
	n.cmd = exec.Command(bins.sovkeys, "standalone", "--data", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", gw),
		"--nats-listen", fmt.Sprintf("127.0.0.1:%d", np), "--log-level", "warn")
	n.cmd.Stdout, n.cmd.Stderr = &bytes.Buffer{}, &n.stderr
	if err := n.cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if pemBytes, err := os.ReadFile(filepath.Join(dir, "tls", "ca.pem")); err == nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pemBytes)
			hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
			if resp, err := hc.Get(n.gateway + "/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return n, nil
				}
			}
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("standalone exited: %s", n.stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	_ = n.cmd.Process.Kill()
	return nil, errors.New("standalone not healthy after 90s")
}

// sovkeys runs an operator command.
func (n *testNode) sovkeys(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(bins.sovkeys, args...)
	cmd.Env = append(os.Environ(), "SOVKEYS_NATS_URL="+n.natsURL, "SOVKEYS_NATS_CREDS="+filepath.Join(n.dir, "operators", "admin.creds"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sovkeys %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// inst is one enrolled instance: its certificate and an agent.conf.
type inst struct {
	id, dir, conf string
	client        *vsclient.Client
}

// enrol issues a certificate as `sovkeys instance issue-cert` does at
// enrolment and writes the agent's configuration; extra lines are
// appended to it.
func enrol(t *testing.T, tenant, id string, extra ...string) *inst {
	t.Helper()
	dir := filepath.Join(t.TempDir(), id)
	node.sovkeys(t, "instance", "issue-cert", "--tenant", tenant, "--instance", id, "--out", dir)
	i := &inst{id: id, dir: dir, conf: filepath.Join(dir, "agent.conf")}
	writeConf(t, i, extra...)
	pemBytes, err := os.ReadFile(filepath.Join(dir, "signing-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	i.client, err = vsclient.New(vsclient.Config{BaseURL: node.gateway, CertFile: filepath.Join(dir, "cert.pem"),
		KeyFile: filepath.Join(dir, "key.pem"), CAFile: filepath.Join(node.dir, "tls", "ca.pem"), SigningKeyDER: blk.Bytes})
	if err != nil {
		t.Fatal(err)
	}
	i.client.RSABits = 2048
	// The tenant and the CA reach authn's caches asynchronously.
	testkit.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		_, _, err := i.client.GenerateSecret(context.Background(), id, "probe")
		return err
	})
	return i
}

func writeConf(t *testing.T, i *inst, extra ...string) {
	t.Helper()
	lines := []string{
		"url = " + node.gateway, "instance_id = " + i.id,
		"cert = " + filepath.Join(i.dir, "cert.pem"), "key = " + filepath.Join(i.dir, "key.pem"),
		"ca = " + filepath.Join(node.dir, "tls", "ca.pem"), "signing_key = " + filepath.Join(i.dir, "signing-key.pem"),
		"automount_file = " + filepath.Join(i.dir, "automount.conf"), "run_dir = " + filepath.Join(i.dir, "run"),
		"rsa_bits = 2048", "retries = 3", "retry_initial = 50ms",
	}
	if err := os.WriteFile(i.conf, []byte(strings.Join(append(lines, extra...), "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// result is one sk-agent process run.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// agent runs sk-agent as a new process (as after a reboot) for i.
func (i *inst) agent(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(bins.agent, args...)
	cmd.Env = append(os.Environ(), "SK_AGENT_CONFIG="+i.conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("sk-agent %v: %v", args, err)
	}
	return r
}

// want checks an exit code and that the output says what.
func want(t *testing.T, r result, code int, says ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got %s", code, r)
	}
	for _, s := range says {
		if !strings.Contains(r.stdout+r.stderr, s) {
			t.Fatalf("output does not say %q:\n%s", s, r)
		}
	}
}

// loopDisk attaches a loop device over a new sparse image of size bytes.
func loopDisk(t *testing.T, size int64) (dev, img string) {
	t.Helper()
	img = filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	dev = run(t, nil, "losetup", "--find", "--show", img)
	t.Cleanup(func() {
		// Any loop device still over the image (ours, or one a failed
		// agent run left behind) is detached.
		out, _ := exec.Command("losetup", "--associated", img, "--noheadings", "--output", "NAME").Output()
		for _, l := range strings.Fields(string(out)) {
			_ = exec.Command("losetup", "--detach", l).Run()
		}
	})
	return dev, img
}

// partLoop attaches a loop device over one partition's byte range.
func partLoop(t *testing.T, img string, start, size int64) string {
	t.Helper()
	return run(t, nil, "losetup", "--find", "--show", "--offset", fmt.Sprint(start), "--sizelimit", fmt.Sprint(size), img)
}

// run runs a tool, stdin optional, and returns its trimmed stdout.
func run(t *testing.T, stdin []byte, name string, args ...string) string {
	t.Helper()
	return testkit.RunTool(t, stdin, name, args...)
}

// execOutput runs a tool and returns its raw stdout.
func execOutput(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).Output()
}
