package hsm

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
)

// newTestHSM opens an HSM on a fresh SoftHSM token, closed when t ends.
func newTestHSM(t testing.TB, mutate ...func(*Config)) *HSM {
	t.Helper()
	module, label, pin := hsmtest.NewToken(t)
	cfg := Config{ModulePath: module, TokenLabel: label, PIN: pin}
	for _, m := range mutate {
		m(&cfg)
	}
	h, err := Open(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

const (
	// busyWait is how long a caller waits for the only, busy session.
	busyWait = 20 * time.Millisecond
	// stillBlocked is how long Close must go on waiting for an operation in
	// flight; a pass proves nothing about later, a failure is a real bug.
	stillBlocked = 50 * time.Millisecond
)

// moduleRefs counts references to loaded modules. Tests that compare counts
// do not run in parallel: paused parallel tests open no HSM until the
// sequential ones have finished.
func moduleRefs() int {
	modules.mu.Lock()
	defer modules.mu.Unlock()
	n := 0
	for _, m := range modules.byPath {
		n += m.refs
	}
	return n
}

func TestOpenHSMErrors(t *testing.T) {
	module, label, pin := hsmtest.NewToken(t)
	tests := []struct {
		name string
		cfg  Config
	}{
		{"unknown token", Config{ModulePath: module, TokenLabel: "no-such-token", PIN: pin}},
		{"wrong pin", Config{ModulePath: module, TokenLabel: label, PIN: "wrong-pin"}},
		{"missing module", Config{ModulePath: "/nonexistent/libp11.so", TokenLabel: label, PIN: pin}},
		{"invalid config", Config{ModulePath: module, TokenLabel: label}},
	}
	before := moduleRefs()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Open(t.Context(), tt.cfg, nil)
			if err == nil {
				h.Close()
				t.Fatal("Open succeeded")
			}
			if strings.Contains(err.Error(), pin) {
				t.Errorf("error contains the PIN: %v", err)
			}
			if got := moduleRefs(); got != before {
				t.Errorf("module references = %d after failed open, want %d", got, before)
			}
		})
	}
}

func TestCloseIdempotent(t *testing.T) {
	module, label, pin := hsmtest.NewToken(t)
	before := moduleRefs()
	h, err := Open(t.Context(), Config{ModulePath: module, TokenLabel: label, PIN: pin, Sessions: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Sessions(); got != 3 {
		t.Errorf("Sessions() = %d, want 3", got)
	}
	for i := range 3 {
		if err := h.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	if got := moduleRefs(); got != before {
		t.Errorf("module references = %d after Close, want %d", got, before)
	}
	if _, _, _, err := h.EncryptGCM(t.Context(), "k", []byte("x"), nil); !errors.Is(err, ErrHSMClosed) {
		t.Errorf("EncryptGCM after Close = %v, want ErrHSMClosed", err)
	}
	if err := h.HealthCheck(t.Context()); err == nil {
		t.Error("HealthCheck after Close succeeded")
	}
}

func TestDefaultSessions(t *testing.T) {
	h := newTestHSM(t)
	if got := h.Sessions(); got != defaultSessions {
		t.Errorf("Sessions() = %d, want %d", got, defaultSessions)
	}
}

// Several HSMs in one process share one module initialisation; closing one
// leaves the others working.
func TestModuleShared(t *testing.T) {
	before := moduleRefs()
	a := newTestHSM(t)
	b := newTestHSM(t)
	if got := moduleRefs(); got != before+2 {
		t.Fatalf("module references = %d, want %d", got, before+2)
	}
	for _, h := range []*HSM{a, b} {
		if err := h.HealthCheck(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.HealthCheck(t.Context()); err != nil {
		t.Fatalf("HealthCheck on b after closing a: %v", err)
	}
	// Two HSMs on the same token: the second login finds the user logged in.
	c, err := Open(t.Context(), b.cfg, nil)
	if err != nil {
		t.Fatalf("second HSM on one token: %v", err)
	}
	if err := c.HealthCheck(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.HealthCheck(t.Context()); err != nil {
		t.Fatalf("HealthCheck on b after closing c on the same token: %v", err)
	}
}

func TestWithSessionRespectsContext(t *testing.T) {
	h := newTestHSM(t, func(c *Config) { c.Sessions = 1 })
	if _, err := h.CreateAESKey(t.Context(), "k", true, true); err != nil {
		t.Fatal(err)
	}

	held, release := make(chan struct{}), make(chan struct{})
	holderDone := make(chan error, 1)
	go func() {
		holderDone <- h.withSession(t.Context(), func(pkcs11.SessionHandle) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held

	ctx, cancel := context.WithTimeout(t.Context(), busyWait)
	defer cancel()
	_, _, _, err := h.EncryptGCM(ctx, "k", []byte("x"), nil)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, shared.ErrDependencyTimeout) {
		t.Errorf("EncryptGCM while the only session is busy = %v, want deadline exceeded", err)
	}
	canceled, cancel2 := context.WithCancel(t.Context())
	cancel2()
	if _, _, _, err := h.EncryptGCM(canceled, "k", []byte("x"), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("EncryptGCM with canceled context = %v, want context.Canceled", err)
	}

	close(release)
	if err := <-holderDone; err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := h.EncryptGCM(t.Context(), "k", []byte("x"), nil); err != nil {
		t.Errorf("EncryptGCM after the session came back: %v", err)
	}
}

func TestCloseWaitsForInFlight(t *testing.T) {
	module, label, pin := hsmtest.NewToken(t)
	h, err := Open(t.Context(), Config{ModulePath: module, TokenLabel: label, PIN: pin, Sessions: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	held, release := make(chan struct{}), make(chan struct{})
	go h.withSession(t.Context(), func(pkcs11.SessionHandle) error { //nolint:errcheck
		close(held)
		<-release
		return nil
	})
	<-held
	closed := make(chan error, 1)
	go func() { closed <- h.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a session was in use", err)
	case <-time.After(stillBlocked):
	}
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// A session the HSM dropped is replaced transparently.
func TestSessionReplaced(t *testing.T) {
	h := newTestHSM(t, func(c *Config) { c.Sessions = 1 })
	if _, err := h.CreateAESKey(t.Context(), "k", true, true); err != nil {
		t.Fatal(err)
	}
	old := <-h.pool
	if err := h.p11.CloseSession(old); err != nil {
		t.Fatal(err)
	}
	h.pool <- old
	iv, ct, tag, err := h.EncryptGCM(t.Context(), "k", []byte("hello"), nil)
	if err != nil {
		t.Fatalf("EncryptGCM on a closed session: %v", err)
	}
	if pt, err := h.DecryptGCM(t.Context(), "k", iv, ct, tag, nil); err != nil || string(pt) != "hello" {
		t.Fatalf("DecryptGCM = %q, %v", pt, err)
	}
	sh := <-h.pool
	h.pool <- sh
	if sh == old {
		t.Error("the closed session is still in the pool")
	}
}

// A cached handle whose object was destroyed is looked up again.
func TestStaleKeyHandle(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	if _, err := h.CreateAESKey(ctx, "k", true, true); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := h.EncryptGCM(ctx, "k", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	cached, ok := h.keys.get("k")
	if !ok {
		t.Fatal("key not cached")
	}
	raw := h.mod.ctx
	sh := <-h.pool
	if err := raw.DestroyObject(sh, cached.handle); err != nil {
		t.Fatal(err)
	}
	h.pool <- sh

	t.Run("destroyed", func(t *testing.T) {
		if _, _, _, err := h.EncryptGCM(ctx, "k", []byte("x"), nil); !errors.Is(err, shared.ErrKeyNotFound) {
			t.Fatalf("EncryptGCM with a destroyed key = %v, want ErrKeyNotFound", err)
		}
	})
	t.Run("replaced behind the cache", func(t *testing.T) {
		h.keys.put("k", cached) // the stale handle, as if nobody had looked
		sh := <-h.pool
		_, err := raw.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, "k"),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		})
		h.pool <- sh
		if err != nil {
			t.Fatal(err)
		}
		iv, ct, tag, err := h.EncryptGCM(ctx, "k", []byte("again"), nil)
		if err != nil {
			t.Fatalf("EncryptGCM with a stale cached handle: %v", err)
		}
		if pt, err := h.DecryptGCM(ctx, "k", iv, ct, tag, nil); err != nil || string(pt) != "again" {
			t.Fatalf("DecryptGCM = %q, %v", pt, err)
		}
	})
}
