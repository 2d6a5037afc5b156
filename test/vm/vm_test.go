// Package vm boots real virtual machines (QEMU, TCG) whose init plays an
// instance's boot: sk-agent unlocks and mounts its LUKS2 data volume
// through a real `sovkeys standalone` on the host. The VM has no network
// card: a virtio-serial port carries its TCP connections to the gateway on
// the host's 127.0.0.1 (internal/bridge). See docs/agent.md, "VM test".
package vm

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/client/vsclient"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// env is what every boot shares, made once by TestMain.
type env struct {
	skip      string // why the VM tests cannot run here, or ""
	tmp       string
	sovkeys   string // binaries
	qemu      string
	kernel    kernel
	initramfs string
	node      *node
}

var shared env

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		shared.skip = "VM boots are skipped in -short mode"
	}
	if shared.skip == "" {
		shared.skip = prerequisites()
	}
	if shared.skip != "" {
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "sovkeys-vm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if err := setup(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "vm test setup:", err)
		if shared.node != nil {
			shared.node.stop()
		}
		return 1
	}
	code := m.Run()
	shared.node.stop()
	return code
}

// cacheDir is where scripts/vm-deps.sh puts the kernel package.
func cacheDir() string {
	if d := os.Getenv("SOVKEYS_VM_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "sovkeys-vm")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "sovkeys-vm")
}

// kernelDeb finds Debian's kernel package in the cache (the newest).
func kernelDeb() (string, error) {
	debs, _ := filepath.Glob(filepath.Join(cacheDir(), "linux-image-*-amd64_*.deb"))
	if len(debs) == 0 {
		return "", fmt.Errorf("no linux-image-*-amd64 package in %s", cacheDir())
	}
	sort.Strings(debs)
	return debs[len(debs)-1], nil
}

// prerequisites returns why the VM test cannot run here, or "".
func prerequisites() string {
	const how = " (make vm-deps, or scripts/vm-deps.sh, installs it)"
	if runtime.GOARCH != "amd64" || runtime.GOOS != "linux" {
		return "the VM test boots an amd64 Debian kernel on linux/amd64 hosts only"
	}
	if os.Geteuid() != 0 {
		return "the VM test needs root (it prepares original-format volumes with cryptsetup on the host): run as root"
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "qemu-system-x86_64 is not installed" + how
	}
	if _, err := busybox(); err != nil {
		return "busybox is not installed (busybox-static)" + how
	}
	for _, tool := range append([]string{"dpkg-deb", "ldd", "mke2fs", "debugfs", "sgdisk", "mkfs.fat", "mcopy", "softhsm2-util"}, guestTools...) {
		if _, err := lookTool(tool); err != nil {
			return tool + " is not installed (make deps installs cryptsetup, gdisk, dosfstools, mtools, softhsm2)"
		}
	}
	if _, err := kernelDeb(); err != nil {
		return err.Error() + how
	}
	return ""
}

func busybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if out, err := exec.Command(p, "--list").Output(); err == nil && bytes.Contains(out, []byte("depmod")) {
			// A static busybox runs in the guest without any library.
			if f, err := os.ReadFile(p); err == nil && !bytes.Contains(f[:min(len(f), 1<<20)], []byte("ld-linux")) {
				return p, nil
			}
		}
	}
	return "", errors.New("no static busybox")
}

func lookTool(name string) (string, error) { return testkit.LookTool(name) }

func fileExists(p string) bool { return testkit.FileExists(p) }

func setup(tmp string) error {
	start := time.Now()
	shared.tmp = tmp
	shared.qemu, _ = exec.LookPath("qemu-system-x86_64")
	deb, err := kernelDeb()
	if err != nil {
		return err
	}
	if shared.kernel, err = unpackKernel(deb, cacheDir()); err != nil {
		return err
	}
	bb, err := busybox()
	if err != nil {
		return err
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	in := initramfsInputs{kernel: shared.kernel, busybox: bb, initScript: "testdata/init.sh",
		agent: filepath.Join(tmp, "sk-agent"), vmguest: filepath.Join(tmp, "sk-vmguest")}
	shared.sovkeys = filepath.Join(tmp, "sovkeys")
	// The node needs cgo (PKCS#11); the guest's binaries are static.
	for _, b := range []struct{ out, pkg, cgo string }{
		{shared.sovkeys, "../../cmd/sovkeys", "1"}, {in.agent, "../../cmd/sk-agent", "0"}, {in.vmguest, "./guest/sk-vmguest", "0"},
	} {
		cmd := exec.Command(goBin, "build", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	if shared.initramfs, err = buildInitramfs(in, filepath.Join(tmp, "initramfs")); err != nil {
		return err
	}
	fi, _ := os.Stat(shared.initramfs)
	fmt.Fprintf(os.Stderr, "vm test: kernel %s, initramfs %.1f MB, binaries and initramfs built in %s\n",
		shared.kernel.version, float64(fi.Size())/1e6, time.Since(start).Round(time.Second))
	shared.node, err = newNode(filepath.Join(tmp, "node"), filepath.Join(tmp, "unseal-shares"))
	if err != nil {
		return err
	}
	return shared.node.start()
}

// node is the `sovkeys standalone` the instances talk to; it keeps its data
// dir and ports across restarts (the "sovkeys down at boot" scenario).
type node struct {
	dir, unseal      string
	gwAddr, natsAddr string
	metricsAddr      string
	mu               sync.Mutex
	cmd              *exec.Cmd
	exited           chan struct{}
	stderr           *bytes.Buffer
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func newNode(dir, unseal string) (*node, error) {
	gw, err := freePort()
	if err != nil {
		return nil, err
	}
	np, err := freePort()
	if err != nil {
		return nil, err
	}
	mp, err := freePort()
	if err != nil {
		return nil, err
	}
	return &node{dir: dir, unseal: unseal, gwAddr: gw, natsAddr: np, metricsAddr: mp}, nil
}

func (n *node) gateway() string { return "https://" + n.gwAddr }

// start runs the node and waits until its gateway is healthy.
func (n *node) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	cmd := exec.Command(shared.sovkeys, "standalone", "--data", n.dir, "--listen", n.gwAddr,
		"--nats-listen", n.natsAddr, "--metrics-listen", n.metricsAddr, "--log-level", "warn", "--dev-unseal-file", n.unseal)
	n.stderr = &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = &bytes.Buffer{}, n.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with an interrupted test
	if err := cmd.Start(); err != nil {
		return err
	}
	n.cmd, n.exited = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(n.exited)
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if pemBytes, err := os.ReadFile(filepath.Join(n.dir, "tls", "ca.pem")); err == nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pemBytes)
			hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
			if resp, err := hc.Get(n.gateway() + "/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		select {
		case <-n.exited:
			return fmt.Errorf("standalone exited: %s", n.stderr.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	_ = cmd.Process.Kill()
	return errors.New("standalone not healthy after 3 minutes")
}

// stop interrupts the node and waits for it to exit.
func (n *node) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(os.Interrupt)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
	n.cmd = nil
}

// creds is the credential of the admin person standalone makes at its
// first start.
func (n *node) creds() string { return filepath.Join(n.dir, "operators", "admin.creds") }

// cli runs an operator command against the node.
func (n *node) cli(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(shared.sovkeys, args...)
	cmd.Env = append(os.Environ(), "SOVKEYS_NATS_URL=nats://"+n.natsAddr, "SOVKEYS_NATS_CREDS="+n.creds())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sovkeys %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// instance is one enrolled VM: its identity, as `sovkeys instance
// issue-cert` writes it, on its own system disk.
type instance struct {
	id, tenant, dir string
	client          *vsclient.Client
}

// enrol issues an instance's certificate and waits until the node accepts it.
func enrol(t *testing.T, tenant, id string) *instance {
	t.Helper()
	n := shared.node
	dir := filepath.Join(t.TempDir(), id)
	n.cli(t, "instance", "issue-cert", "--tenant", tenant, "--instance", id, "--out", dir)
	i := &instance{id: id, tenant: tenant, dir: dir}
	pemBytes, err := os.ReadFile(filepath.Join(dir, "signing-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	i.client, err = vsclient.New(vsclient.Config{BaseURL: n.gateway(), CertFile: filepath.Join(dir, "cert.pem"),
		KeyFile: filepath.Join(dir, "key.pem"), CAFile: filepath.Join(n.dir, "tls", "ca.pem"), SigningKeyDER: blk.Bytes})
	if err != nil {
		t.Fatal(err)
	}
	i.client.RSABits = 2048
	// The tenant and the CA reach authn's caches asynchronously.
	testkit.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		_, _, err := i.client.GenerateSecret(context.Background(), id, "probe")
		return err
	})
	return i
}

// systemDisk makes the instance's system disk: an ext4 image holding
// /etc/sovkeys-agent (configuration, identity, pinned key, automount
// file), as a Debian instance enrolled per docs/agent.md has it. The
// agent reaches the gateway at 127.0.0.1:<gateway port> inside the VM.
func (i *instance) systemDisk(t *testing.T, automount string) string {
	t.Helper()
	etc := filepath.Join(t.TempDir(), "etc")
	if err := os.MkdirAll(etc, 0o700); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(shared.node.dir, "tls", "ca.pem"), filepath.Join(etc, "ca.pem"))
	for _, f := range []string{"cert.pem", "key.pem", "signing-key.pem"} {
		copyFile(t, filepath.Join(i.dir, f), filepath.Join(etc, f))
	}
	conf := strings.Join([]string{
		"url = " + shared.node.gateway(), "instance_id = " + i.id, "auth = mtls",
		"cert = /etc/sovkeys-agent/cert.pem", "key = /etc/sovkeys-agent/key.pem",
		"signing_key = /etc/sovkeys-agent/signing-key.pem", "ca = /etc/sovkeys-agent/ca.pem",
		"automount_file = /etc/sovkeys-agent/automount.conf",
	}, "\n") + "\n"
	writeFile(t, filepath.Join(etc, "agent.conf"), []byte(conf))
	if automount != "" {
		writeFile(t, filepath.Join(etc, "automount.conf"), []byte(automount+"\n"))
	}
	img := filepath.Join(scratch(t), i.id+"-system.img")
	run(t, "mke2fs", "-q", "-t", "ext4", "-d", etc, img, "16M")
	return img
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, b)
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// run runs a host tool and returns its trimmed stdout.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	return runIn(t, nil, name, args...)
}

func runIn(t *testing.T, stdin []byte, name string, args ...string) string {
	t.Helper()
	return testkit.RunTool(t, stdin, name, args...)
}

// sparseDisk makes an empty raw disk image of size bytes.
func sparseDisk(t *testing.T, name string, size int64) string {
	t.Helper()
	p := filepath.Join(scratch(t), name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// scratch returns a new directory for files QEMU opens: QEMU splits its
// options at commas, which test names (and so t.TempDir) may hold.
func scratch(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp(shared.tmp, "s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// gatewayTime reads the gateway's own time for one API from its metrics
// (sovkeys_gateway_request_duration_seconds: request received to answer
// written): the count and sum of seconds since the node started.
func (n *node) gatewayTime(t *testing.T, api string) (count, sum float64) {
	t.Helper()
	resp, err := http.Get("http://" + n.metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	const family = "sovkeys_gateway_request_duration_seconds"
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, "{")
		if !ok || !strings.Contains(rest, `api="`+api+`"`) {
			continue
		}
		f := strings.Fields(rest)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			continue
		}
		switch name {
		case family + "_count":
			count = v
		case family + "_sum":
			sum = v
		}
	}
	return count, sum
}
