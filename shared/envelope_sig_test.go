package shared

import (
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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

	if err := v.Verify("req-1", data, h, "", "S", 1); err != nil {
		t.Fatalf("good signature refused: %v", err)
	}
	if err := v.Verify("req-1", data, h, "", "S", 1); err != nil {
		t.Fatalf("a redelivery (same stream message) is no replay: %v", err)
	}
	refused := func(what, want string, err error) {
		t.Helper()
		if !errors.Is(err, ErrWorkSignature) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: want a refusal saying %q, got %v", what, want, err)
		}
	}
	refused("replay", "replayed", v.Verify("req-1", data, h, "", "S", 2))
	refused("replay on a sibling", "replayed", v.Verify("req-1", data, h, "", "S-1", 1))
	refused("unsigned", "not signed", v.Verify("req-2", data, "", "", "S", 3))
	refused("other key", "not pinned", v.Verify("req-2", data, foreign.Sign("default", "req-2", data), "", "S", 3))
	refused("other pool", "does not verify", v.Verify("req-2", data, s.Sign("other", "req-2", data), "", "S", 3))
	refused("other request", "does not verify", v.Verify("req-3", data, s.Sign("default", "req-2", data), "", "S", 3))
	refused("other body", "does not verify", v.Verify("req-2", []byte("SKE2 other bytes"), s.Sign("default", "req-2", data), "", "S", 3))
	refused("malformed", "malformed", v.Verify("req-2", data, "garbage", "", "S", 3))
	old := s.Sign("default", "req-4", data)
	now = now.Add(WorkSigMaxAge + time.Second)
	refused("stale", "stale", v.Verify("req-4", data, old, "", "S", 4))
	ahead := s.Sign("default", "req-5", data) // the signer's clock runs ahead
	now = now.Add(-WorkSigMaxSkew - time.Second)
	refused("future", "future", v.Verify("req-5", data, ahead, "", "S", 5))
	if bad := v.SetKeys([]string{"not-a-key"}); len(bad) != 1 || v.Keys() != 0 {
		t.Fatalf("malformed pin accepted: %v", bad)
	}
}

// testBox is a stand-in for the pool's box key: a boxed session key is
// the key xored with a pool secret, tagged with the session id.
func testBox(secret byte) (WorkBoxer, WorkOpener) {
	return func(_, session string, key []byte) ([]byte, error) {
			out := []byte(session + ":")
			for _, b := range key {
				out = append(out, b^secret)
			}
			return out, nil
		}, func(session string, boxed []byte) ([]byte, error) {
			rest, ok := strings.CutPrefix(string(boxed), session+":")
			if !ok {
				return nil, errors.New("not for this session")
			}
			key := []byte(rest)
			for i := range key {
				key[i] ^= secret
			}
			return key, nil
		}
}

func TestWorkSessions(t *testing.T) {
	now := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	newSigner := func() *WorkSigner {
		p := filepath.Join(t.TempDir(), WorkKeyFile)
		if _, _, err := EnsureWorkKey(p); err != nil {
			t.Fatal(err)
		}
		s, err := LoadWorkSigner(p, clock)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s, foreign := newSigner(), newSigner()
	box, open := testBox(0x5a)
	v := &WorkVerifier{Pool: "default", Now: clock, Open: open}
	v.SetKeys([]string{s.PublicKey()})
	data := []byte("SKE2 the envelope bytes")

	sig, ses := s.SignWork("default", "a", data, box)
	if !strings.HasPrefix(sig, "v2 ") || ses == "" {
		t.Fatalf("no session signature: %q %q", sig, ses)
	}
	if err := v.Verify("a", data, sig, ses, "S", 1); err != nil {
		t.Fatalf("session item refused: %v", err)
	}
	sig2, ses2 := s.SignWork("default", "b", data, box)
	if ses2 != ses {
		t.Fatal("a second item made a new session")
	}
	// Later items need not carry the announcement once it is known.
	if err := v.Verify("b", data, sig2, "", "S", 2); err != nil {
		t.Fatalf("second session item refused: %v", err)
	}
	refused := func(what, want string, err error) {
		t.Helper()
		if !errors.Is(err, ErrWorkSignature) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: want a refusal saying %q, got %v", what, want, err)
		}
	}
	sig3, _ := s.SignWork("default", "c", data, box)
	refused("other body", "does not verify", v.Verify("c", []byte("SKE2 other"), sig3, ses, "S", 3))
	refused("other request", "does not verify", v.Verify("d", data, sig3, ses, "S", 3))
	refused("replay", "replayed", v.Verify("a", data, sig, ses, "S", 9))

	// A session announced for another pool, by an unpinned key, or whose
	// key does not open with this pool's box key: refused.
	vb := &WorkVerifier{Pool: "other", Now: clock, Open: open}
	vb.SetKeys([]string{s.PublicKey()})
	refused("other pool", "does not verify", vb.Verify("e", data, sig3, ses, "S", 1))
	fsig, fses := foreign.SignWork("default", "f", data, box)
	refused("unpinned key", "not pinned", v.Verify("f", data, fsig, fses, "S", 1))
	otherBox, _ := testBox(0x11)
	s2 := newSigner()
	v.SetKeys([]string{s.PublicKey(), s2.PublicKey()})
	wsig, wses := s2.SignWork("default", "g", data, otherBox)
	_, wrongOpen := testBox(0x22)
	vw := &WorkVerifier{Pool: "default", Now: clock, Open: wrongOpen}
	vw.SetKeys([]string{s2.PublicKey()})
	if err := vw.Verify("g", data, wsig, wses, "S", 1); err == nil {
		t.Fatal("a session key boxed to another pool's key was accepted")
	}
	refused("no announcement", "not announced", (&WorkVerifier{Pool: "default", Now: clock, Open: open}).Verify("h", data, sig3, "", "S", 1))
	// Unpinning the key ends its sessions.
	v.SetKeys([]string{s2.PublicKey()})
	sig4, _ := s.SignWork("default", "i", data, box)
	refused("unpinned after", "no longer pinned", v.Verify("i", data, sig4, ses, "S", 4))
	v.SetKeys([]string{s.PublicKey()})
	// A session outlives neither its lifetime (authn makes a new one) nor
	// a keyworker's patience.
	now = now.Add(WorkSessionLifetime + time.Second)
	sig5, ses5 := s.SignWork("default", "j", data, box)
	if ses5 == ses {
		t.Fatal("session not renewed after its lifetime")
	}
	if err := v.Verify("j", data, sig5, ses5, "S", 5); err != nil {
		t.Fatalf("renewed session refused: %v", err)
	}
	now = now.Add(WorkSigMaxAge)
	refused("expired session", "expired", v.Verify("k", data, "v2 "+strings.Fields(sig)[1]+" "+strconv.FormatInt(now.UnixNano(), 10)+" "+strings.Fields(sig)[3], ses, "S", 6))
	// No box: each item signed with Ed25519.
	if sig, ses := s.SignWork("default", "l", data, nil); strings.HasPrefix(sig, "v2 ") || ses != "" {
		t.Fatal("signed with a session without a box")
	}
	failing := func(string, string, []byte) ([]byte, error) { return nil, errors.New("no box key") }
	if sig, _ := s.SignWork("nobox", "m", data, failing); strings.HasPrefix(sig, "v2 ") {
		t.Fatal("signed with a session whose key could not be boxed")
	}
}

// BenchmarkWorkSignVerify is the hot-path cost of signed work per item:
// authn's signature and a keyworker's verification of a 1 KiB XKS encrypt
// envelope, per item (Ed25519) and with a session (HMAC). It reports the
// process CPU time per item (cpu-ns/op), which the machine's other load
// changes less than the wall time.
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
	box, open := testBox(0x5a)
	env := &Envelope{Version: EnvelopeVersion, API: APIXKSEncrypt, ReplyTo: "sovkeys.reply.gateway.x", KeyStore: "/bench",
		KeyID: "bench-key-1", Body: make([]byte, 1200), BodyForm: BodyFormXKSWork, Deadline: time.Now().Add(time.Second),
		Authz: &Authz{CallerType: "sigv4", CallerID: "AKIDEXAMPLE", Pool: "default", KeyLabel: "bench-key-1"}}
	run := func(name string, sign func(id string, data []byte) (string, string)) {
		b.Run(name, func(b *testing.B) {
			v := &WorkVerifier{Pool: "default", Now: time.Now, Open: open}
			v.SetKeys([]string{pub})
			start := processCPU()
			for i := range b.N {
				env.ID = strconv.Itoa(i)
				data, _ := env.Marshal()
				if sign == nil {
					continue
				}
				h, ses := sign(env.ID, data)
				if err := v.Verify(env.ID, data, h, ses, "S", uint64(i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
		})
	}
	run("marshal only", nil) // the floor: a work item without its signature
	run("ed25519 per item", func(id string, data []byte) (string, string) { return s.Sign("default", id, data), "" })
	run("session hmac", func(id string, data []byte) (string, string) { return s.SignWork("default", id, data, box) })
}

// processCPU is the process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Work due soon is remembered until it could no longer be done (its
// deadline plus the skew allowed between hosts), in generations of
// replayShortGen: a copy delivered within that is refused, one delivered
// later is not a replay the HSM could act on (the keyworker drops expired
// work) and is no longer remembered. Work with no deadline, or a far one,
// keeps the long window.
func TestWorkReplayMemoryFollowsTheDeadline(t *testing.T) {
	now := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	path := filepath.Join(t.TempDir(), WorkKeyFile)
	pub, _, err := EnsureWorkKey(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := LoadWorkSigner(path, clock)
	if err != nil {
		t.Fatal(err)
	}
	v := &WorkVerifier{Pool: "default", Now: clock}
	v.SetKeys([]string{pub})
	data := []byte("SKE2 the envelope bytes")
	due, never := s.Sign("default", "due", data), s.Sign("default", "never", data)
	if err := v.VerifyUntil("due", data, due, "", "S", 1, now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := v.VerifyUntil("never", data, never, "", "S", 2, time.Time{}); err != nil {
		t.Fatal(err)
	}
	// Within the deadline plus the skew: both copies refused.
	now = now.Add(time.Second + WorkSigMaxSkew)
	for _, c := range []struct{ id, sig string }{{"due", due}, {"never", never}} {
		if err := v.VerifyUntil(c.id, data, c.sig, "", "S-1", 9, time.Time{}); !errors.Is(err, ErrWorkSignature) {
			t.Fatalf("%s: replay within its window accepted: %v", c.id, err)
		}
	}
	// Two short generations later the due item is forgotten (it is long
	// expired), the other is not.
	now = now.Add(2*replayShortGen + time.Second)
	if err := v.VerifyUntil("due", data, due, "", "S-1", 9, time.Time{}); err != nil {
		t.Fatalf("expired work still remembered: %v", err)
	}
	if err := v.VerifyUntil("never", data, never, "", "S-1", 9, time.Time{}); !errors.Is(err, ErrWorkSignature) {
		t.Fatalf("work without a deadline forgotten early: %v", err)
	}
}
