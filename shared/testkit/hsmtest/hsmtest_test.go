package hsmtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
)

func TestNewToken(t *testing.T) {
	type token struct{ module, label, pin string }
	var (
		mu     sync.Mutex
		tokens []token
	)
	t.Run("parallel", func(t *testing.T) {
		for i := range 6 { // concurrent callers each get their own token
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				m, l, p := NewToken(t)
				mu.Lock()
				defer mu.Unlock()
				tokens = append(tokens, token{m, l, p})
			})
		}
	})

	conf := ConfPath()
	if !strings.HasPrefix(filepath.Base(filepath.Dir(conf)), dirPrefix) {
		t.Fatalf("SOFTHSM2_CONF = %q, want a per-process directory", conf)
	}
	if _, err := os.Stat(conf); err != nil {
		t.Fatal(err)
	}

	p := process.env.ctx
	seen := map[string]bool{}
	for _, tok := range tokens {
		if seen[tok.label] {
			t.Fatalf("label %q handed out twice", tok.label)
		}
		seen[tok.label] = true
		if len(tok.label) > 32 || len(tok.pin) < 4 {
			t.Errorf("label %q / pin length %d out of PKCS#11 bounds", tok.label, len(tok.pin))
		}
		slot := findSlot(t, p, tok.label)
		sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Login(sh, pkcs11.CKU_USER, "wrong-pin"); err == nil {
			t.Errorf("token %q accepted a wrong pin", tok.label)
		}
		if err := p.Login(sh, pkcs11.CKU_USER, tok.pin); err != nil {
			t.Errorf("login to %q: %v", tok.label, err)
		}
		_ = p.CloseSession(sh) // the last session closed ends the login
	}
}

func findSlot(t *testing.T, p *pkcs11.Ctx, label string) uint {
	t.Helper()
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	var found []uint
	for _, s := range slots {
		if info, err := p.GetTokenInfo(s); err == nil && info.Label == label {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("token %q found in %d slots, want 1", label, len(found))
	}
	return found[0]
}

func TestRemoveStaleDirs(t *testing.T) {
	NewToken(t) // make sure setup ran, so our own directory exists
	// A pid far above pid_max stands for an exited test binary.
	stale := filepath.Join(os.TempDir(), dirPrefix+"999999999-x")
	if err := os.MkdirAll(filepath.Join(stale, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	removeStaleDirs()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		_ = os.RemoveAll(stale)
		t.Errorf("stale directory survived: %v", err)
	}
	if _, err := os.Stat(ConfPath()); err != nil {
		t.Errorf("own directory removed: %v", err)
	}
}
