package hsm

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
)

func TestMechanismsSoftHSMAccepted(t *testing.T) {
	module, label, _ := hsmtest.NewToken(t)
	r, err := InspectToken(module, label, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(label); err != nil {
		t.Fatalf("SoftHSM refused: %v", err)
	}
	if r.WrapPad != pkcs11.CKM_AES_KEY_WRAP_PAD && r.WrapPad != CKM_AES_KEY_WRAP_KWP {
		t.Errorf("wrap-pad mechanism %#x", r.WrapPad)
	}
	if len(r.Rows) < 8 {
		t.Errorf("only %d rows checked", len(r.Rows))
	}
}

// TestMechanismsMissingRefused: a token that lacks a mechanism (the fault
// wrapper hides AES-GCM and both RFC 5649 wraps from SoftHSM) is refused
// at Open, naming each missing mechanism and what needs it.
func TestMechanismsMissingRefused(t *testing.T) {
	module, label, pin := hsmtest.NewToken(t)
	_, err := Open(t.Context(), Config{ModulePath: module, TokenLabel: label, PIN: pin, WrapP11: func(p P11) P11 {
		f := NewFaultP11(p)
		f.Refuse(pkcs11.CKM_AES_GCM, pkcs11.CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP)
		return f
	}}, slog.New(slog.DiscardHandler))
	if !errors.Is(err, ErrMechanismsMissing) {
		t.Fatalf("Open = %v, want ErrMechanismsMissing", err)
	}
	for _, want := range []string{"CKM_AES_GCM", "XKS encrypt/decrypt", "CKM_AES_KEY_WRAP_KWP", "export-keys"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

// openCryptokiModule is Debian's opencryptoki (a second, real PKCS#11
// implementation): its soft token lacks AES-GCM, EC and AES key wrap.
const openCryptokiModule = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so"

// startSlotd starts opencryptoki's slot daemon unless it runs, and stops
// the one it started when the test ends.
func startSlotd(t *testing.T) {
	if len(slotdPIDs()) > 0 {
		return
	}
	bin := "/usr/sbin/pkcsslotd"
	if err := exec.Command(bin).Run(); err != nil { // it daemonizes
		t.Skipf("opencryptoki: cannot start %s (needs root or the pkcs11 group): %v", bin, err)
	}
	started := slotdPIDs()
	t.Cleanup(func() {
		for _, pid := range started {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	})
}

func slotdPIDs() []int {
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil || strings.TrimSpace(string(b)) != "pkcsslotd" {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(d))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestMechanismsOpenCryptokiRefused runs the check against opencryptoki's
// soft token (`make deps` installs the package; the test skips, saying so,
// where it is not installed): the keyworker must refuse it at start with
// the list of what it lacks.
func TestMechanismsOpenCryptokiRefused(t *testing.T) {
	if _, err := os.Stat(openCryptokiModule); err != nil {
		t.Skipf("opencryptoki not installed (apt-get install opencryptoki; `make deps` does): %v", err)
	}
	startSlotd(t)
	const label, soPIN = "sovkeys-ock", "87654321" // opencryptoki's default SO PIN
	// The soft token is slot 3 (/etc/opencryptoki/opencryptoki.conf);
	// initialise it once with our label.
	// One reference for the whole test: opencryptoki 3.8 crashes when
	// initialised again after C_Finalize in one process.
	mod, err := modules.acquire(openCryptokiModule)
	if err != nil {
		t.Skipf("opencryptoki: %v", err)
	}
	t.Cleanup(func() { _ = modules.release(mod) })
	slot, found, err := findTokenSlot(mod.ctx, label)
	deadline := time.Now().Add(5 * time.Second)
	for err != nil && time.Now().Before(deadline) { // slotd still starting
		time.Sleep(100 * time.Millisecond)
		slot, found, err = findTokenSlot(mod.ctx, label)
	}
	if err != nil {
		t.Skipf("opencryptoki slots: %v", err)
	}
	if !found {
		slot = 3
		if err := mod.ctx.InitToken(slot, soPIN, label); err != nil {
			t.Skipf("opencryptoki: init the soft token (SO PIN changed from the default?): %v", err)
		}
	}

	r, err := InspectToken(openCryptokiModule, label, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	missing := map[string]bool{}
	for _, m := range r.Missing {
		missing[m.Mechanism] = true
	}
	for _, want := range []string{"CKM_AES_GCM", "CKM_EC_KEY_PAIR_GEN", "CKM_ECDSA", "CKM_AES_KEY_WRAP", "CKM_AES_KEY_WRAP_KWP"} {
		if !missing[want] {
			t.Errorf("opencryptoki: %s not reported missing (report %+v)", want, r.Missing)
		}
	}
	_, err = Open(t.Context(), Config{ModulePath: openCryptokiModule, TokenLabel: label, PIN: "unused-before-the-check"}, slog.New(slog.DiscardHandler))
	if !errors.Is(err, ErrMechanismsMissing) {
		t.Fatalf("Open on opencryptoki = %v, want ErrMechanismsMissing", err)
	}
	for _, want := range []string{"CKM_AES_GCM", "CKM_EC_KEY_PAIR_GEN", "CKM_AES_KEY_WRAP"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %s", err, want)
		}
	}
	t.Logf("refused as expected: %v", err)
}
