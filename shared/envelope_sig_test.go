package shared

import (
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestWorkSignature(t *testing.T) {
	now := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	path := filepath.Join(t.TempDir(), WorkKeyFile)
	pub, created, err := EnsureWorkKey(path)
	if err != nil || !created {
		t.Fatalf("ensure: %v %v", created, err)
	}
	if again, created, err := EnsureWorkKey(path); err != nil || created || again != pub {
		t.Fatalf("ensure again: %q %v %v", again, created, err)
	}
	s, err := LoadWorkSigner(path, clock)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := LoadWorkSigner(func() string {
		p := filepath.Join(t.TempDir(), "foreign")
		if _, _, err := EnsureWorkKey(p); err != nil {
			t.Fatal(err)
		}
		return p
	}(), clock)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("SKE2 the envelope bytes")
	v := &WorkVerifier{Pool: "default", Now: clock}
	v.SetKeys([]string{pub})
	h := s.Sign("default", "req-1", data)

	if err := v.Verify("req-1", data, h, "S", 1); err != nil {
		t.Fatalf("good signature refused: %v", err)
	}
	if err := v.Verify("req-1", data, h, "S", 1); err != nil {
		t.Fatalf("a redelivery (same stream message) is no replay: %v", err)
	}
	refused := func(what, want string, err error) {
		t.Helper()
		if !errors.Is(err, ErrWorkSignature) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: want a refusal saying %q, got %v", what, want, err)
		}
	}
	refused("replay", "replayed", v.Verify("req-1", data, h, "S", 2))
	refused("replay on a sibling", "replayed", v.Verify("req-1", data, h, "S-1", 1))
	refused("unsigned", "not signed", v.Verify("req-2", data, "", "S", 3))
	refused("other key", "not pinned", v.Verify("req-2", data, foreign.Sign("default", "req-2", data), "S", 3))
	refused("other pool", "does not verify", v.Verify("req-2", data, s.Sign("other", "req-2", data), "S", 3))
	refused("other request", "does not verify", v.Verify("req-3", data, s.Sign("default", "req-2", data), "S", 3))
	refused("other body", "does not verify", v.Verify("req-2", []byte("SKE2 other bytes"), s.Sign("default", "req-2", data), "S", 3))
	refused("malformed", "malformed", v.Verify("req-2", data, "garbage", "S", 3))
	old := s.Sign("default", "req-4", data)
	now = now.Add(WorkSigMaxAge + time.Second)
	refused("stale", "stale", v.Verify("req-4", data, old, "S", 4))
	ahead := s.Sign("default", "req-5", data) // the signer's clock runs ahead
	now = now.Add(-WorkSigMaxSkew - time.Second)
	refused("future", "future", v.Verify("req-5", data, ahead, "S", 5))
	if bad := v.SetKeys([]string{"not-a-key"}); len(bad) != 1 || v.Keys() != 0 {
		t.Fatalf("malformed pin accepted: %v", bad)
	}
}

// BenchmarkWorkSignVerify is the hot-path cost of signed work per item:
// authn's Sign and a keyworker's Verify of a 1 KiB XKS encrypt envelope.
func BenchmarkWorkSignVerify(b *testing.B) {
	path := filepath.Join(b.TempDir(), WorkKeyFile)
	pub, _, err := EnsureWorkKey(path)
	if err != nil {
		b.Fatal(err)
	}
	s, err := LoadWorkSigner(path, time.Now)
	if err != nil {
		b.Fatal(err)
	}
	v := &WorkVerifier{Pool: "default", Now: time.Now}
	v.SetKeys([]string{pub})
	env := &Envelope{Version: EnvelopeVersion, API: APIXKSEncrypt, ReplyTo: "sovkeys.reply.gateway.x", KeyStore: "/bench",
		KeyID: "bench-key-1", Body: make([]byte, 1200), BodyForm: BodyFormXKSWork, Deadline: time.Now().Add(time.Second),
		Authz: &Authz{CallerType: "sigv4", CallerID: "AKIDEXAMPLE", Pool: "default", KeyLabel: "bench-key-1"}}
	b.Run("marshal only", func(b *testing.B) { // the floor: what a work item costs without its signature
		for i := range b.N {
			env.ID = strconv.Itoa(i)
			_, _ = env.Marshal()
		}
	})
	b.Run("marshal sign verify", func(b *testing.B) {
		for i := range b.N {
			env.ID = strconv.Itoa(i)
			data, _ := env.Marshal()
			h := s.Sign("default", env.ID, data)
			if err := v.Verify(env.ID, data, h, "S", uint64(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
