package keyworker

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/crypto/shamir"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/hsmtest"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// A sealed keyworker on a real SoftHSM token and a real JetStream: five
// wrong share sets cost at most three C_Login calls (counted at the
// PKCS#11 boundary), a wrong combination of v2 shares costs none, and the
// right shares unseal it once the hour has passed.
func TestUnsealFailedLoginsBoundedOnSoftHSM(t *testing.T) {
	module, label, pin := hsmtest.NewToken(t)
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	kv, err := unseal.Open(ctx, js, mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	var calls, failed atomic.Int64
	logins := func() int { return int(calls.Load()) }
	clkMu := sync.Mutex{}
	now := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	clock := func() time.Time { clkMu.Lock(); defer clkMu.Unlock(); return now }
	published := make(chan unseal.KeyRecord, 1)
	done := make(chan error, 1)
	var opened *HSM
	go func() {
		cfg := unseal.Config{Pool: "default", Threshold: 2, MaxFailedLogins: 3, Now: clock,
			Logger: slog.New(slog.DiscardHandler), OnKey: func(r unseal.KeyRecord) { published <- r }}
		done <- unseal.Await(ctx, kv, cfg, func(p string) error {
			h, err := OpenHSM(ctx, HSMConfig{ModulePath: module, TokenLabel: label, PIN: p, Sessions: 1,
				WrapP11: func(inner hsm.P11) hsm.P11 { return loginCounter{P11: inner, calls: &calls, failed: &failed} },
			}, slog.New(slog.DiscardHandler))
			if err != nil {
				return err
			}
			opened = h
			return nil
		})
	}()
	var rec unseal.KeyRecord
	select {
	case rec = <-published:
	case err := <-done:
		t.Fatal(err)
	}
	submit := func(lines ...string) {
		t.Helper()
		for _, l := range lines {
			s, err := unseal.Parse(l)
			if err != nil {
				t.Fatal(err)
			}
			if err := unseal.Submit(ctx, kv, s, rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	// handled waits until the keyworker has read everything submitted so
	// far: a malformed share behind it is purged in order.
	handled := func(x int) {
		t.Helper()
		key := shared.UnsealShareKey("default", rec.Keyworker, x)
		if _, err := kv.Put(ctx, key, []byte("x")); err != nil {
			t.Fatal(err)
		}
		testkit.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			if _, err := kv.Get(ctx, key); err == nil {
				return fmt.Errorf("%s not handled yet", key)
			}
			return nil
		})
	}

	// A wrong combination of v2 shares: caught by the check value.
	right, err := unseal.SplitPIN(pin, "default", 5, 2)
	if err != nil {
		t.Fatal(err)
	}
	bad := right[4]
	bad.Share.Y = append([]byte(nil), bad.Share.Y...)
	bad.Share.Y[0] ^= 1
	submit(right[3].Encode(), bad.Encode())
	handled(250)
	if n := logins(); n != 0 {
		t.Fatalf("%d C_Login calls for a combination the check value refuses", n)
	}

	// Five wrong v1 share sets (no check value: only the budget protects).
	for i := range 5 {
		parts, err := shamir.Split([]byte(fmt.Sprintf("wrong-pin-%d", i)), 10, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range parts[2*i : 2*i+2] {
			submit(fmt.Sprintf("sovkeys-share:v1:default:2:%d:%s", p.X, base64.RawURLEncoding.EncodeToString(p.Y)))
		}
	}
	handled(251)
	if n := logins(); n != 3 {
		t.Fatalf("five wrong share sets cost %d C_Login calls, want 3", n)
	}
	st, err := unseal.ReadLoginState(ctx, kv, "default", clock)
	if err != nil || st.Failed != 3 {
		t.Fatalf("budget %+v %v", st, err)
	}

	// Locked: even the right shares are not tried within the hour.
	submit(right[0].Encode(), right[1].Encode())
	handled(252)
	if n := logins(); n != 3 {
		t.Fatalf("a locked pool called C_Login (%d calls)", n)
	}
	clkMu.Lock()
	now = now.Add(unseal.LoginWindow + time.Second)
	clkMu.Unlock()
	submit(right[1].Encode(), right[2].Encode())
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("not unsealed by the right shares after the window")
	}
	t.Cleanup(func() { _ = opened.Close() })
	if n, f := logins(), failed.Load(); n != 4 || f != 3 {
		t.Fatalf("%d C_Login calls in all, %d failed; want 3 failed + 1", n, f)
	}
	if err := opened.HealthCheck(ctx); err != nil {
		t.Fatalf("unsealed HSM: %v", err)
	}
}

// loginCounter counts C_Login calls, and those the token refused, at the
// PKCS#11 boundary of a real module.
type loginCounter struct {
	hsm.P11
	calls, failed *atomic.Int64
}

func (l loginCounter) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	l.calls.Add(1)
	err := l.P11.Login(sh, userType, pin)
	if err != nil {
		l.failed.Add(1)
	}
	return err
}
