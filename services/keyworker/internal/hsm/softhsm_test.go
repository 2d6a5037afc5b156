package hsm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
)

func TestFindSoftHSMModule(t *testing.T) {
	path, err := FindSoftHSMModule()
	if err != nil {
		t.Fatalf("FindSoftHSMModule: %v (install softhsm2)", err)
	}
	if filepath.Base(path) != "libsofthsm2.so" {
		t.Errorf("FindSoftHSMModule = %q", path)
	}
}

func TestEnsureSoftHSMTokenValidation(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, dir, label, so, user string
	}{
		{"no dir", "", "tok", "so-pin", "user-pin"},
		{"no label", dir, "", "so-pin", "user-pin"},
		{"long label", dir, strings.Repeat("x", 33), "so-pin", "user-pin"},
		{"short so pin", dir, "tok", "123", "user-pin"},
		{"short user pin", dir, "tok", "so-pin", "123"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := EnsureSoftHSMToken(t.Context(), tt.dir, tt.label, tt.so, tt.user)
			if !errors.Is(err, shared.ErrConfigValidation) {
				t.Fatalf("EnsureSoftHSMToken = %v, want ErrConfigValidation", err)
			}
		})
	}
}

// The EnsureSoftHSMToken tests run sequentially: they create tokens beside
// hsmtest's, in the module every test shares, and count its references.

// In a process whose SOFTHSM2_CONF is already set (here by hsmtest), the
// token goes where that configuration says, and ConfPath names it.
func TestEnsureSoftHSMTokenInProcess(t *testing.T) {
	hsmtest.NewToken(t) // the process configuration is hsmtest's from here on
	conf := os.Getenv("SOFTHSM2_CONF")
	ctx := t.Context()
	label := fmt.Sprintf("ensure-%x", randBytes(8)) // unique under -count
	for i := range 2 {
		tok, err := EnsureSoftHSMToken(ctx, t.TempDir(), label, "so-pin-1", "user-pin-1")
		if err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
		if tok.ConfPath != conf || tok.TokenLabel != label {
			t.Fatalf("call %d: %+v, want ConfPath %q", i+1, tok, conf)
		}
		h, err := Open(ctx, Config{ModulePath: tok.ModulePath, TokenLabel: tok.TokenLabel, PIN: "user-pin-1"}, nil)
		if err != nil {
			t.Fatalf("call %d: Open: %v", i+1, err) // also fails if the label were on two tokens
		}
		_, err = h.CreateAESKey(ctx, "k", true, true)
		if want := i > 0; errors.Is(err, ErrKeyExists) != want {
			t.Errorf("call %d: CreateAESKey = %v; want ErrKeyExists %t (same token reopened)", i+1, err, want)
		}
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEnsureSoftHSMTokenRestart runs a fresh process (no SOFTHSM2_CONF, no
// initialised library) twice against one directory, as `sovkeys standalone`
// starting and restarting: the first creates the token and seals a secret,
// the second finds the token and unseals it.
func TestEnsureSoftHSMTokenRestart(t *testing.T) {
	dir := t.TempDir()
	for _, phase := range []string{"create", "reopen"} {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestEnsureSoftHSMTokenChild$", "-test.v", "-test.count=1")
		cmd.Env = append(withoutEnv(os.Environ(), "SOFTHSM2_CONF"),
			"SOVKEYS_TEST_SOFTHSM_DIR="+dir, "SOVKEYS_TEST_SOFTHSM_PHASE="+phase)
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("--- PASS: TestEnsureSoftHSMTokenChild")) {
			t.Fatalf("%s phase: %v\n%s", phase, err, out)
		}
	}
}

func TestEnsureSoftHSMTokenChild(t *testing.T) {
	dir, phase := os.Getenv("SOVKEYS_TEST_SOFTHSM_DIR"), os.Getenv("SOVKEYS_TEST_SOFTHSM_PHASE")
	if dir == "" {
		t.Skip("run by TestEnsureSoftHSMTokenRestart")
	}
	ctx := t.Context()
	const label, so, pin = "standalone", "so-pin-1", "user-pin-1"
	if _, set := os.LookupEnv("SOFTHSM2_CONF"); set {
		t.Fatal("SOFTHSM2_CONF set in the child")
	}
	var tok SoftHSMToken
	for range 2 { // the second call in one process finds the token too
		var err error
		if tok, err = EnsureSoftHSMToken(ctx, dir, label, so, pin); err != nil {
			t.Fatal(err)
		}
	}
	wantConf := filepath.Join(dir, "softhsm2.conf")
	if tok.ConfPath != wantConf || os.Getenv("SOFTHSM2_CONF") != wantConf {
		t.Fatalf("ConfPath %q, SOFTHSM2_CONF %q; want %q", tok.ConfPath, os.Getenv("SOFTHSM2_CONF"), wantConf)
	}
	if got := moduleRefs(); got != 0 {
		t.Fatalf("module references after EnsureSoftHSMToken = %d, want 0", got)
	}

	h, err := Open(ctx, Config{ModulePath: tok.ModulePath, TokenLabel: label, PIN: pin}, nil)
	if err != nil {
		t.Fatal(err) // fails too when two tokens carry the label
	}
	blobPath := filepath.Join(dir, "sealed")
	switch phase {
	case "create":
		blob, err := h.Seal(ctx, []byte("kept across restarts"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(blobPath, blob, 0o600); err != nil {
			t.Fatal(err)
		}
	case "reopen":
		blob, err := os.ReadFile(blobPath)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := h.Unseal(ctx, blob, []byte("aad")); err != nil || string(got) != "kept across restarts" {
			t.Fatalf("Unseal after restart = %q, %v", got, err)
		}
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := moduleRefs(); got != 0 {
		t.Fatalf("module references after Close = %d, want 0 (library finalized)", got)
	}
}

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
