package hsm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
)

func TestEncryptDecryptGCM(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	if _, err := h.CreateAESKey(ctx, "k", true, true); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name           string
		plaintext, aad []byte
	}{
		{"small with aad", []byte("hello"), []byte("context")},
		{"no aad", []byte("hello"), nil},
		{"empty plaintext", []byte{}, []byte("only aad")},
		{"xks plaintext 4300", randBytes(4300), randBytes(64)},
		{"xks aad 8192", randBytes(32), randBytes(8192)},
		{"large both", randBytes(6000), randBytes(9000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iv, ct, tag, err := h.EncryptGCM(ctx, "k", tt.plaintext, tt.aad)
			if err != nil {
				t.Fatal(err)
			}
			if len(iv) != 12 || len(tag) != 16 || len(ct) != len(tt.plaintext) {
				t.Fatalf("lengths iv=%d ct=%d tag=%d", len(iv), len(ct), len(tag))
			}
			if len(ct) > 0 && bytes.Equal(ct, tt.plaintext) {
				t.Fatal("ciphertext equals plaintext")
			}
			pt, err := h.DecryptGCM(ctx, "k", iv, ct, tag, tt.aad)
			if err != nil || !bytes.Equal(pt, tt.plaintext) {
				t.Fatalf("DecryptGCM = %d bytes, %v", len(pt), err)
			}
		})
	}
}

func TestEncryptGCMFreshIVs(t *testing.T) {
	h := newTestHSM(t)
	if _, err := h.CreateAESKey(t.Context(), "k", true, true); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 200 {
		iv, _, _, err := h.EncryptGCM(t.Context(), "k", []byte("same"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(iv)] {
			t.Fatalf("iv %x repeated", iv)
		}
		seen[string(iv)] = true
	}
}

func TestDecryptGCMRejectsTampering(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	if _, err := h.CreateAESKey(ctx, "k", true, true); err != nil {
		t.Fatal(err)
	}
	if _, err := h.CreateAESKey(ctx, "other", true, true); err != nil {
		t.Fatal(err)
	}
	pt, aad := randBytes(100), []byte("aad")
	iv, ct, tag, err := h.EncryptGCM(ctx, "k", pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 0x01; return c }
	tests := []struct {
		name             string
		key              string
		iv, ct, tag, aad []byte
	}{
		{"tag bit", "k", iv, ct, flip(tag, 15), aad},
		{"iv bit", "k", flip(iv, 0), ct, tag, aad},
		{"ciphertext bit", "k", iv, flip(ct, 50), tag, aad},
		{"aad changed", "k", iv, ct, tag, []byte("aae")},
		{"aad missing", "k", iv, ct, tag, nil},
		{"truncated ciphertext", "k", iv, ct[:99], tag, aad},
		{"short iv", "k", iv[:8], ct, tag, aad},
		{"long iv", "k", append(bytes.Clone(iv), 0), ct, tag, aad},
		{"short tag", "k", iv, ct, tag[:12], aad},
		{"other key", "other", iv, ct, tag, aad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h.DecryptGCM(ctx, tt.key, tt.iv, tt.ct, tt.tag, tt.aad)
			if !errors.Is(err, shared.ErrInvalidCiphertext) || got != nil {
				t.Fatalf("DecryptGCM = %d bytes, %v; want ErrInvalidCiphertext", len(got), err)
			}
		})
	}
	// Failed decryptions leave the sessions usable.
	for range h.Sessions() + 1 {
		if got, err := h.DecryptGCM(ctx, "k", iv, ct, tag, aad); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("DecryptGCM after failures = %v", err)
		}
	}
}

func TestKeyUsageAndMissingKeys(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	for _, k := range []struct {
		label    string
		enc, dec bool
	}{{"both", true, true}, {"enc", true, false}, {"dec", false, true}} {
		if _, err := h.CreateAESKey(ctx, k.label, k.enc, k.dec); err != nil {
			t.Fatal(err)
		}
	}
	iv, ct, tag, err := h.EncryptGCM(ctx, "both", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"encrypt with decrypt-only key", func() error { _, _, _, err := h.EncryptGCM(ctx, "dec", []byte("x"), nil); return err }, shared.ErrInvalidKeyUsage},
		{"decrypt with encrypt-only key", func() error { _, err := h.DecryptGCM(ctx, "enc", iv, ct, tag, nil); return err }, shared.ErrInvalidKeyUsage},
		{"encrypt with missing key", func() error { _, _, _, err := h.EncryptGCM(ctx, "nope", []byte("x"), nil); return err }, shared.ErrKeyNotFound},
		{"decrypt with missing key", func() error { _, err := h.DecryptGCM(ctx, "nope", iv, ct, tag, nil); return err }, shared.ErrKeyNotFound},
		{"key info of missing key", func() error { _, err := h.KeyInfo(ctx, "nope"); return err }, shared.ErrKeyNotFound},
		{"oversized plaintext", func() error { _, _, _, err := h.EncryptGCM(ctx, "both", make([]byte, maxDataSize+1), nil); return err }, shared.ErrValidation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// SoftHSM uses the IV it is given, so asking it for an HSM-generated IV
// leaves the zero buffer: that must fail, never encrypt under a fixed IV.
func TestIVFromHSMFailsClosedOnSoftHSM(t *testing.T) {
	h := newTestHSM(t, func(c *Config) { c.IVFromHSM = true })
	if _, err := h.CreateAESKey(t.Context(), "k", true, true); err != nil {
		t.Fatal(err)
	}
	iv, ct, tag, err := h.EncryptGCM(t.Context(), "k", []byte("secret"), nil)
	if err == nil || iv != nil || ct != nil || tag != nil {
		t.Fatalf("EncryptGCM = iv %x, ct %x, tag %x, %v; want an error and nothing else", iv, ct, tag, err)
	}
}

func TestHealthCheck(t *testing.T) {
	h := newTestHSM(t)
	ctx := t.Context()
	if _, err := h.KeyInfo(ctx, HealthKeyLabel); !errors.Is(err, shared.ErrKeyNotFound) {
		t.Fatalf("health key before the first check: %v", err)
	}
	for range 2 {
		if err := h.HealthCheck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if info, err := h.KeyInfo(ctx, HealthKeyLabel); err != nil || !info.Encrypt || !info.Decrypt {
		t.Fatalf("health key = %+v, %v", info, err)
	}
}

// More goroutines than sessions encrypt and decrypt at once.
func TestConcurrentEncryptDecrypt(t *testing.T) {
	h := newTestHSM(t, func(c *Config) { c.Sessions = 3 })
	ctx := t.Context()
	for _, l := range []string{"k0", "k1"} {
		if _, err := h.CreateAESKey(ctx, l, true, true); err != nil {
			t.Fatal(err)
		}
	}
	const workers, rounds = 24, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			label := fmt.Sprintf("k%d", w%2)
			for i := range rounds {
				pt, aad := randBytes(1+i*37), []byte(fmt.Sprintf("w%d-r%d", w, i))
				iv, ct, tag, err := h.EncryptGCM(ctx, label, pt, aad)
				if err != nil {
					errs <- err
					return
				}
				got, err := h.DecryptGCM(ctx, label, iv, ct, tag, aad)
				if err != nil || !bytes.Equal(got, pt) {
					errs <- fmt.Errorf("worker %d round %d: %v", w, i, err)
					return
				}
				if i%10 == 0 {
					if err := h.HealthCheck(ctx); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// BenchmarkEncryptGCM measures raw AES-256-GCM encryption of 1 KiB under a
// token key through the session pool, for several pool sizes:
// go test -run '^$' -bench EncryptGCM ./services/keyworker/
func BenchmarkEncryptGCM(b *testing.B) {
	for _, sessions := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
			h := newTestHSM(b, func(c *Config) { c.Sessions = sessions })
			ctx := b.Context()
			if _, err := h.CreateAESKey(ctx, "bench", true, true); err != nil {
				b.Fatal(err)
			}
			pt, aad := randBytes(1024), randBytes(32)
			b.SetBytes(int64(len(pt)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, _, _, err := h.EncryptGCM(ctx, "bench", pt, aad); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}

func ExampleHSM_EncryptGCM() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir, err := os.MkdirTemp("", "sovkeys-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	tok, err := EnsureSoftHSMToken(ctx, dir, "example-"+fmt.Sprint(os.Getpid()), "so-pin-1234", "user-pin-1234")
	if err != nil {
		fmt.Println(err)
		return
	}
	h, err := Open(ctx, Config{ModulePath: tok.ModulePath, TokenLabel: tok.TokenLabel, PIN: "user-pin-1234"}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	if _, err := h.CreateAESKey(ctx, "xks-key-1", true, true); err != nil {
		fmt.Println(err)
		return
	}
	iv, ct, tag, err := h.EncryptGCM(ctx, "xks-key-1", []byte("volume secret"), []byte("aad"))
	if err != nil {
		fmt.Println(err)
		return
	}
	pt, err := h.DecryptGCM(ctx, "xks-key-1", iv, ct, tag, []byte("aad"))
	fmt.Println(len(iv), len(tag), string(pt), err)
	// Output: 12 16 volume secret <nil>
}
