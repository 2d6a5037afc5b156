// Package hsmtest gives tests their own SoftHSMv2 token.
//
// The first NewToken in a test binary points SOFTHSM2_CONF at a fresh
// directory of its own under os.TempDir (SoftHSM reads that variable once, at
// C_Initialize), so test binaries running in parallel never share a token
// directory. Every NewToken then creates a token with a unique label, so tests
// in one binary never share a token either. Directories left by test binaries
// that have exited are removed by the next one.
//
// Tokens are created in-process with C_InitToken: SoftHSMv2 offers a fresh
// free slot after each one, whereas a token made by softhsm2-util in a
// subprocess stays invisible to a process whose library is already
// initialised. The library is initialised here (or found already initialised)
// and never finalized: other users in the process, such as
// services/keyworker, see CKR_CRYPTOKI_ALREADY_INITIALIZED and leave it alone.
//
// The package imports nothing from sovkeys, so any package's tests can use it.
package hsmtest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/miekg/pkcs11"
)

const dirPrefix = "sovkeys-hsmtest-"

// modulePaths are where distributions install libsofthsm2.so.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

// process is the SoftHSM set-up shared by every test in this binary: the
// library and SOFTHSM2_CONF are per process, so this state is too.
var process struct {
	once sync.Once
	env  *softHSM
	err  error
}

type softHSM struct {
	module string
	mu     sync.Mutex // serialises token creation
	ctx    *pkcs11.Ctx
}

// NewToken creates a SoftHSMv2 token for t, with a unique label and random
// PINs, and returns what an HSM configuration needs. It fails t (it does not
// skip) when SoftHSMv2 is not installed: install the softhsm2 package.
func NewToken(t testing.TB) (modulePath, label, pin string) {
	t.Helper()
	process.once.Do(func() { process.env, process.err = setup() })
	if process.err != nil {
		t.Fatalf("hsmtest: %v", process.err)
	}
	label = "hsmtest-" + randomHex(8) // 24 bytes; token labels hold 32
	pin = randomHex(8)
	if err := process.env.createToken(label, randomHex(8), pin); err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	return process.env.module, label, pin
}

// ConfPath returns the SOFTHSM2_CONF this process uses, for tests that run
// softhsm2-util or a child process against the same tokens. It is empty
// before the first NewToken.
func ConfPath() string {
	return os.Getenv("SOFTHSM2_CONF")
}

func setup() (*softHSM, error) {
	module := ""
	for _, p := range modulePaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			module = p
			break
		}
	}
	if module == "" {
		return nil, fmt.Errorf("libsofthsm2.so not found in %v (apt-get install softhsm2)", modulePaths)
	}
	removeStaleDirs()
	dir, err := os.MkdirTemp("", dirPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := "directories.tokendir = " + tokens + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	prev, hadPrev := os.LookupEnv("SOFTHSM2_CONF")
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return nil, err
	}
	ctx := pkcs11.New(module)
	if ctx == nil {
		return nil, fmt.Errorf("cannot load %s", module)
	}
	if err := ctx.Initialize(); err != nil {
		if !isCKR(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			return nil, fmt.Errorf("initialize %s: %w", module, err)
		}
		// Initialised before us with another configuration, which stays in
		// effect: put the variable back so it names the one in use.
		if hadPrev {
			_ = os.Setenv("SOFTHSM2_CONF", prev)
		} else {
			_ = os.Unsetenv("SOFTHSM2_CONF")
		}
		_ = os.RemoveAll(dir)
	}
	return &softHSM{module: module, ctx: ctx}, nil
}

// removeStaleDirs deletes the directories of test binaries that have exited.
func removeStaleDirs() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, m := range matches {
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(m), dirPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil && errors.Is(p.Signal(syscall.Signal(0)), os.ErrProcessDone) {
			_ = os.RemoveAll(m)
		}
	}
}

func (s *softHSM) createToken(label, soPIN, userPIN string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Someone else in the process may have finalized the library since.
	if err := s.ctx.Initialize(); err != nil && !isCKR(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		return fmt.Errorf("initialize: %w", err)
	}
	// Another creator in the process (keyworker.EnsureSoftHSMToken) may claim
	// the free slot between our look and C_InitToken; re-initialising its
	// token fails on its SO PIN and we try the next free slot.
	var lastErr error
	for range 3 {
		slot, err := s.freeSlot()
		if err != nil {
			return err
		}
		if err := s.ctx.InitToken(slot, soPIN, label); err != nil {
			lastErr = fmt.Errorf("init token %q in slot %d: %w", label, slot, err)
			if isCKR(err, pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_SESSION_EXISTS) {
				continue
			}
			return lastErr
		}
		if info, err := s.ctx.GetTokenInfo(slot); err != nil || info.Label != label {
			lastErr = fmt.Errorf("slot %d taken by another token", slot)
			continue
		}
		return s.initPIN(slot, soPIN, userPIN)
	}
	return lastErr
}

// freeSlot returns a slot with an uninitialised token; miekg/pkcs11's
// GetSlotList calls C_GetSlotList(NULL) first, which makes SoftHSM add one.
func (s *softHSM) freeSlot() (uint, error) {
	slots, err := s.ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("list slots: %w", err)
	}
	for _, slot := range slots {
		info, err := s.ctx.GetTokenInfo(slot)
		if err != nil {
			return 0, fmt.Errorf("token info of slot %d: %w", slot, err)
		}
		if info.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			return slot, nil
		}
	}
	return 0, errors.New("no free slot")
}

func (s *softHSM) initPIN(slot uint, soPIN, userPIN string) error {
	sh, err := s.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	defer s.ctx.CloseSession(sh) //nolint:errcheck // nothing to do about it
	if err := s.ctx.Login(sh, pkcs11.CKU_SO, soPIN); err != nil {
		return fmt.Errorf("so login: %w", err)
	}
	defer s.ctx.Logout(sh) //nolint:errcheck // closing the session ends the login too
	if err := s.ctx.InitPIN(sh, userPIN); err != nil {
		return fmt.Errorf("init user pin: %w", err)
	}
	return nil
}

func isCKR(err error, codes ...uint) bool {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	for _, c := range codes {
		if uint(e) == c {
			return true
		}
	}
	return false
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewTokenSO is NewToken that also returns the security officer's PIN,
// for tests of what only the SO may do (marking a key CKA_TRUSTED).
func NewTokenSO(t testing.TB) (modulePath, label, soPIN, pin string) {
	t.Helper()
	process.once.Do(func() { process.env, process.err = setup() })
	if process.err != nil {
		t.Fatalf("hsmtest: %v", process.err)
	}
	label, soPIN, pin = "hsmtest-"+randomHex(8), randomHex(8), randomHex(8)
	if err := process.env.createToken(label, soPIN, pin); err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	return process.env.module, label, soPIN, pin
}
