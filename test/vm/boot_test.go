package vm

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/test/vm/internal/bridge"
)

// bootTimeout bounds one VM boot. A boot takes ~30 s on TCG alone; the
// machines that run the suite are shared and slow, and the "sovkeys down"
// boot waits for the node to start: generous, never a speed assertion.
const bootTimeout = 8 * time.Minute

// vmSpec is one boot: the scenario its init plays, the disks in order
// (vda is the system disk), extra kernel parameters, and a hook called for
// every "SKVM MARK <name>" line.
type vmSpec struct {
	scenario string
	disks    []string
	params   map[string]string
	onMark   func(name string)
	// assetTag is the SMBIOS board asset tag (EC2 Nitro sets the
	// instance id there); empty: none.
	assetTag string
}

// bootResult is what the console said.
type bootResult struct {
	console    string
	pass, fail []string
	ended      bool
	stamps     []stamp
	info       map[string]string
	bridgeErr  error
	elapsed    time.Duration
}

type stamp struct {
	t    float64
	text string
}

var (
	skvmLine  = regexp.MustCompile(`SKVM (PASS|FAIL|END|MARK|INFO|T)\b ?(.*)$`)
	stampLine = regexp.MustCompile(`^([0-9]+\.[0-9]+) ?(.*)$`)
)

// boot runs one VM to its end (or bootTimeout) and parses its console.
// A kernel that panics before /init ran (no SKVM line at all: nothing of
// the scenario happened) is booted once more: an emulated machine on a
// busy host can miss the kernel's early timing checks.
func boot(t *testing.T, spec vmSpec) bootResult {
	t.Helper()
	res, qemuErr := bootOnce(t, spec)
	if !res.ended && len(res.pass)+len(res.fail) == 0 && strings.Contains(res.console, "Kernel panic") {
		t.Logf("boot %q: the kernel panicked before /init, booting again:\n%s", spec.scenario, tail(res.console, 30))
		res, qemuErr = bootOnce(t, spec)
	}
	if !res.ended {
		t.Errorf("boot %q did not reach its end (%s) after %s; console:\n%s", spec.scenario, qemuErr, res.elapsed.Round(time.Second), tail(res.console, 80))
	}
	for _, f := range res.fail {
		t.Errorf("boot %q: FAIL %s", spec.scenario, f)
	}
	if len(res.fail) > 0 && res.ended {
		t.Logf("console of %q:\n%s", spec.scenario, tail(res.console, 200))
	}
	t.Logf("boot %q: %d PASS, %d FAIL, %s", spec.scenario, len(res.pass), len(res.fail), res.elapsed.Round(time.Second))
	return res
}

// bootOnce runs the VM and returns what its console said and how QEMU
// ended.
func bootOnce(t *testing.T, spec vmSpec) (bootResult, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	dir := scratch(t)

	// The host end of the serial port: QEMU connects to this socket.
	sock := filepath.Join(dir, "gw.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var res bootResult
	bridgeDone := make(chan struct{})
	go func() {
		defer close(bridgeDone)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		go func() { <-ctx.Done(); c.Close() }()
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		res.bridgeErr = bridge.Host(ctx, c, shared.node.gwAddr, log)
	}()

	// no_timer_check: on a busy host the emulated timer can miss the
	// kernel's early IO-APIC check ("IO-APIC + timer doesn't work!").
	params := []string{"console=ttyS0", "loglevel=3", "panic=-1", "no_timer_check", "sk.scenario=" + spec.scenario,
		"sk.port=" + portOf(shared.node.gwAddr), fmt.Sprintf("sk.disks=%d", len(spec.disks))}
	for k, v := range spec.params {
		params = append(params, "sk."+k+"="+v)
	}
	args := []string{"-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
		"-nodefaults", "-nic", "none", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", shared.kernel.vmlinuz, "-initrd", shared.initramfs, "-append", strings.Join(params, " "),
		"-device", "virtio-serial-pci", "-chardev", "socket,id=gw,path=" + sock,
		"-device", "virtserialport,chardev=gw,name=gw"}
	if spec.assetTag != "" {
		args = append(args, "-smbios", "type=2,asset="+spec.assetTag)
	}
	for _, d := range spec.disks {
		args = append(args, "-drive", "file="+d+",format=raw,if=virtio,cache=unsafe")
	}
	cmd := exec.CommandContext(ctx, shared.qemu, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var console strings.Builder
	var live io.Writer = io.Discard
	if logDir := os.Getenv("SOVKEYS_VM_LOGDIR"); logDir != "" {
		_ = os.MkdirAll(logDir, 0o755)
		if f, err := os.Create(filepath.Join(logDir, spec.scenario+".console.log")); err == nil {
			defer f.Close()
			live = f
		}
	}
	res.info = map[string]string{}
	var marks sync.WaitGroup
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		console.WriteString(line + "\n")
		_, _ = io.WriteString(live, line+"\n")
		m := skvmLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		switch m[1] {
		case "PASS":
			res.pass = append(res.pass, m[2])
		case "FAIL":
			res.fail = append(res.fail, m[2])
		case "END":
			res.ended = true
		case "MARK":
			if spec.onMark != nil {
				marks.Add(1)
				go func(name string) { defer marks.Done(); spec.onMark(name) }(m[2])
			}
		case "INFO":
			k, v, _ := strings.Cut(m[2], " ")
			res.info[k] = v
		case "T":
			if s := stampLine.FindStringSubmatch(m[2]); s != nil {
				f, _ := strconv.ParseFloat(s[1], 64)
				res.stamps = append(res.stamps, stamp{t: f, text: s[2]})
			}
		}
	}
	err = cmd.Wait()
	res.elapsed = time.Since(start)
	cancel()
	ln.Close() // QEMU may have died before it connected
	<-bridgeDone
	marks.Wait()
	res.console = console.String()
	return res, fmt.Sprintf("qemu: %v %s", err, strings.TrimSpace(stderr.String()))
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// passed fails the test unless the boot printed a PASS line containing what.
func (r bootResult) passed(t *testing.T, what ...string) {
	t.Helper()
	for _, w := range what {
		found := false
		for _, p := range r.pass {
			if strings.Contains(p, w) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no PASS line for %q (PASS lines: %q)", w, r.pass)
		}
	}
}

// timeline is one timed sk-agent run (init.sh "timed"): its stamps from
// START to STOP.
type timeline struct {
	what  string
	marks []stamp
}

func (r bootResult) timelines() []timeline {
	var out []timeline
	var cur *timeline
	for _, s := range r.stamps {
		switch {
		case strings.HasPrefix(s.text, "START "):
			out = append(out, timeline{what: strings.TrimPrefix(s.text, "START ")})
			cur = &out[len(out)-1]
			cur.marks = append(cur.marks, s)
		case cur != nil:
			cur.marks = append(cur.marks, s)
			if strings.HasPrefix(s.text, "STOP ") {
				cur = nil
			}
		}
	}
	return out
}

// at returns the time of the first stamp at or after from that contains
// text ("OK", a step's end, must be the whole stamp).
func (tl timeline) at(text string, from float64) (float64, bool) {
	for _, s := range tl.marks {
		match := strings.Contains(s.text, text)
		if text == "OK" {
			match = strings.TrimSpace(s.text) == "OK"
		}
		if s.t >= from && match {
			return s.t, true
		}
	}
	return 0, false
}

// unlockTimes splits a timed mount/automount run: from the agent's start to
// the service's answer (local checks, one-time RSA key, call), then to the
// volume mounted (luksOpen with its KDF, mount).
type unlockTimes struct {
	total, beforeCall, call, unlockMount float64
}

func (tl timeline) unlock() (unlockTimes, bool) {
	start := tl.marks[0].t
	ask, ok1 := tl.at("Asking the service", start)
	answered, ok2 := tl.at("OK", ask)
	mnt, ok3 := tl.at("Mounting the encrypted", answered)
	done, ok4 := tl.at("OK", mnt)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return unlockTimes{}, false
	}
	return unlockTimes{total: done - start, beforeCall: ask - start, call: answered - ask, unlockMount: done - mnt}, true
}
