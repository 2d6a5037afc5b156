package hsm

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// newFaultHSM opens a SoftHSM token through a FaultP11.
func newFaultHSM(t *testing.T, sessions int) (*HSM, *FaultP11) {
	t.Helper()
	var f *FaultP11
	h := newTestHSM(t, func(c *Config) {
		c.Sessions = sessions
		c.WrapP11 = func(p P11) P11 { f = NewFaultP11(p); return f }
	})
	return h, f
}

// TestCiphertextErrorsOfEveryVendor: whatever a vendor's module answers for
// input that does not authenticate is InvalidCiphertextException, and the
// session stays in use.
func TestCiphertextErrorsOfEveryVendor(t *testing.T) {
	h, f := newFaultHSM(t, 1)
	ctx := t.Context()
	if _, err := h.CreateAESKey(ctx, "k", true, true); err != nil {
		t.Fatal(err)
	}
	pt, aad := []byte("plaintext"), []byte("aad")
	iv, ct, tag, err := h.EncryptGCM(ctx, "k", pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	for name, ckr := range map[string]uint{
		"CKR_ENCRYPTED_DATA_INVALID (spec)":      pkcs11.CKR_ENCRYPTED_DATA_INVALID,
		"CKR_ENCRYPTED_DATA_LEN_RANGE":           pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		"CKR_GENERAL_ERROR (SoftHSMv2)":          pkcs11.CKR_GENERAL_ERROR,
		"CKR_FUNCTION_FAILED (nShield)":          pkcs11.CKR_FUNCTION_FAILED,
		"CKR_SIGNATURE_INVALID (some CloudHSMs)": pkcs11.CKR_SIGNATURE_INVALID,
	} {
		f.Inject(Fault{Op: "Decrypt", CKR: ckr, Times: 1})
		if _, err := h.DecryptGCM(ctx, "k", iv, ct, tag, aad); !errors.Is(err, shared.ErrInvalidCiphertext) {
			t.Errorf("%s: %v, want InvalidCiphertextException", name, err)
		}
	}
	if f.Calls("OpenSession") != 1 {
		t.Fatalf("ciphertext errors replaced sessions (%d opens)", f.Calls("OpenSession"))
	}
	if got, err := h.DecryptGCM(ctx, "k", iv, ct, tag, aad); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("decrypt after the faults: %v", err)
	}
}

// TestSessionAndDeviceErrorsRecover: a lost session or a device error
// replaces the session and the request succeeds, also after the device was
// unreachable for a while (backoff).
func TestSessionAndDeviceErrorsRecover(t *testing.T) {
	for _, ckr := range []uint{pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT} {
		t.Run(pkcs11.Error(ckr).Error(), func(t *testing.T) {
			h, f := newFaultHSM(t, 1)
			ctx := t.Context()
			if _, err := h.CreateAESKey(ctx, "k", true, true); err != nil {
				t.Fatal(err)
			}
			iv, ct, tag, err := h.EncryptGCM(ctx, "k", []byte("pt"), nil)
			if err != nil {
				t.Fatal(err)
			}
			// The operation fails once, and the device refuses two reopenings.
			f.Inject(Fault{Op: "Decrypt", CKR: ckr, Times: 1}, Fault{Op: "OpenSession", CKR: ckr, Times: 2})
			if got, err := h.DecryptGCM(ctx, "k", iv, ct, tag, nil); err != nil || string(got) != "pt" {
				t.Fatalf("decrypt across %s: %q, %v", pkcs11.Error(ckr), got, err)
			}
			if opens := f.Calls("OpenSession"); opens != 4 { // 1 at Open, 2 refused, 1 replacement
				t.Fatalf("%d session opens, want 4", opens)
			}
			if st, _ := h.SessionHealth(); st != HealthDegraded {
				t.Fatalf("health after a recovered loss = %s, want DEGRADED", st)
			}
		})
	}
}

// TestDeadDeviceTimesOut: while no session can be opened the call backs off
// until its deadline and fails with DependencyTimeout (503), and health
// says UNAVAILABLE; once the device is back, the next call recovers.
func TestDeadDeviceTimesOut(t *testing.T) {
	h, f := newFaultHSM(t, 2)
	if _, err := h.CreateAESKey(t.Context(), "k", true, true); err != nil {
		t.Fatal(err)
	}
	f.Inject(Fault{Op: "Encrypt", CKR: pkcs11.CKR_DEVICE_REMOVED, Times: 1}, Fault{Op: "OpenSession", CKR: pkcs11.CKR_DEVICE_REMOVED, Times: -1})
	ctx, cancel := context.WithTimeout(t.Context(), deadDeviceDeadline)
	defer cancel()
	_, _, _, err := h.EncryptGCM(ctx, "k", []byte("pt"), nil)
	if !errors.Is(err, shared.ErrDependencyTimeout) || shared.CodeOf(err) != shared.CodeDependencyTimeout {
		t.Fatalf("encrypt on a dead device = %v, want DependencyTimeout", err)
	}
	if st, detail := h.SessionHealth(); st != HealthUnavailable || detail == "" {
		t.Fatalf("health = %s %q, want UNAVAILABLE", st, detail)
	}
	f.mu.Lock()
	f.faults = nil // the device is back
	f.mu.Unlock()
	// The dead session is still in the pool; the next user replaces it.
	f.Inject(Fault{Op: "Encrypt", CKR: pkcs11.CKR_SESSION_HANDLE_INVALID, Times: 1})
	if _, _, _, err := h.EncryptGCM(t.Context(), "k", []byte("pt"), nil); err != nil {
		t.Fatalf("encrypt after the device came back: %v", err)
	}
	if st, _ := h.SessionHealth(); st != HealthDegraded {
		t.Fatalf("health after recovery = %s, want DEGRADED", st)
	}
}

// deadDeviceDeadline: how long a call waits for a dead device.
const deadDeviceDeadline = 300 * time.Millisecond

// TestSessionCountLimit: a token that allows fewer sessions than configured
// gives a smaller pool (bounded opening), reported DEGRADED; a token that
// gives none fails Open.
func TestSessionCountLimit(t *testing.T) {
	var f *FaultP11
	h := newTestHSM(t, func(c *Config) {
		c.Sessions = 4
		c.WrapP11 = func(p P11) P11 {
			f = NewFaultP11(p)
			f.Inject(Fault{Op: "OpenSession", CKR: pkcs11.CKR_SESSION_COUNT, Times: -1, After: 2})
			return f
		}
	})
	if h.Sessions() != 2 {
		t.Fatalf("pool of %d sessions, want 2", h.Sessions())
	}
	if st, _ := h.SessionHealth(); st != HealthDegraded {
		t.Fatalf("health = %s, want DEGRADED", st)
	}
	if _, err := h.CreateAESKey(t.Context(), "k", true, true); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := h.EncryptGCM(t.Context(), "k", []byte("pt"), nil); err != nil {
		t.Fatal(err)
	}
}

// TestKeepAliveReplacesDeadIdleSessions: an idle session the HSM dropped is
// found and replaced before a request meets it.
func TestKeepAliveReplacesDeadIdleSessions(t *testing.T) {
	h, f := newFaultHSM(t, 3)
	if n, err := h.KeepAlive(t.Context()); n != 0 || err != nil {
		t.Fatalf("KeepAlive on healthy sessions = %d, %v", n, err)
	}
	f.Inject(Fault{Op: "GetSessionInfo", CKR: pkcs11.CKR_SESSION_HANDLE_INVALID, Times: 2})
	if n, err := h.KeepAlive(t.Context()); n != 2 || err != nil {
		t.Fatalf("KeepAlive = %d replaced, %v; want 2", n, err)
	}
	if err := h.HealthCheck(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestTokenMovedToAnotherSlot: when the token is no longer in its slot
// (removed and put back elsewhere), recovery finds it again by label.
func TestTokenMovedToAnotherSlot(t *testing.T) {
	h, f := newFaultHSM(t, 1)
	if _, err := h.CreateAESKey(t.Context(), "k", true, true); err != nil {
		t.Fatal(err)
	}
	right := h.slot.Swap(0xfffff) // a slot SoftHSM does not have
	f.Inject(Fault{Op: "Encrypt", CKR: pkcs11.CKR_DEVICE_REMOVED, Times: 1})
	if _, _, _, err := h.EncryptGCM(t.Context(), "k", []byte("pt"), nil); err != nil {
		t.Fatalf("encrypt after the token moved: %v", err)
	}
	if got := h.slot.Load(); got != right {
		t.Fatalf("slot %d after recovery, want %d", got, right)
	}
}
