package unseal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

const testPool = "p1"

// clock is an injected clock the login-budget tests move forward.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// sealedKW is one running Await: its published key and every PIN it tried.
type sealedKW struct {
	rec  KeyRecord
	done chan error
	mu   sync.Mutex
	pins []string
}

func (k *sealedKW) tries() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.pins...)
}

// startSealed runs Await on kv as a keyworker whose HSM PIN is pin, until
// the test ends; it returns once the key is published.
func startSealed(t *testing.T, kv jetstream.KeyValue, pin string, cfg Config) *sealedKW {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	k := &sealedKW{done: make(chan error, 1)}
	published := make(chan KeyRecord, 1)
	cfg.Pool, cfg.OnKey = testPool, func(r KeyRecord) { published <- r }
	if cfg.Threshold == 0 {
		cfg.Threshold = 2
	}
	go func() {
		k.done <- Await(ctx, kv, cfg, func(p string) error {
			k.mu.Lock()
			defer k.mu.Unlock()
			k.pins = append(k.pins, p)
			if p != pin {
				return errors.New("CKR_PIN_INCORRECT")
			}
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-k.done; k.done <- nil })
	select {
	case k.rec = <-published:
	case err := <-k.done:
		t.Fatalf("await: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no key published")
	}
	return k
}

func (k *sealedKW) waitUnsealed(t *testing.T) {
	t.Helper()
	select {
	case err := <-k.done:
		k.done <- err
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("not unsealed")
	}
}

func openKV(t *testing.T) jetstream.KeyValue {
	t.Helper()
	_, _, js := natstest.Run(t)
	kv, err := Open(t.Context(), js, mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func submit(t *testing.T, kv jetstream.KeyValue, rec KeyRecord, shares ...Share) {
	t.Helper()
	for _, s := range shares {
		if err := Submit(t.Context(), kv, s, rec); err != nil {
			t.Fatal(err)
		}
	}
}

// noShares waits until no share is left in the bucket for pool (each is
// purged once its keyworker has read it).
func noShares(t *testing.T, kv jetstream.KeyValue, filters ...string) {
	t.Helper()
	filters = append(filters, shared.UnsealSharesFilter(testPool))
	testkit.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		// A copy: WatchFiltered rewrites its argument in place.
		l, err := kv.ListKeysFiltered(t.Context(), append([]string(nil), filters...)...)
		if err != nil {
			return err
		}
		for k := range l.Keys() {
			return fmt.Errorf("%s still stored", k)
		}
		return nil
	})
}

func TestEncryptedSharesUnseal(t *testing.T) {
	t.Parallel()
	const pin = "1234-secret-pin"
	v2, err := SplitPIN(pin, testPool, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	for name, shares := range map[string][]Share{
		"v2": {v2[2], v2[0]},
		// Lines custodians hold from the previous release still unseal.
		"v1": parseAll(t, v1Lines(t, pin, testPool, 3, 2)[1:]...),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			kv := openKV(t)
			kw := startSealed(t, kv, pin, Config{Threshold: 2})
			recs, err := PublishedKeys(t.Context(), kv, testPool)
			if err != nil || len(recs) != 1 || recs[0].Fingerprint != kw.rec.Fingerprint {
				t.Fatalf("published keys %+v, %v", recs, err)
			}
			to, err := Recipients(testPool, recs, []string{kw.rec.Fingerprint})
			if err != nil {
				t.Fatal(err)
			}
			submit(t, kv, to[0], shares...)
			kw.waitUnsealed(t)
			if got := kw.tries(); len(got) != 1 || got[0] != pin {
				t.Fatalf("%d PIN tries, want one (the right PIN)", len(got))
			}
			noShares(t, kv, shared.UnsealKeysFilter(testPool)) // shares and key record gone
		})
	}
}

// Bad input gets a clear refusal and changes nothing: no login is tried
// for a malformed share, a share of another pool or index, a ciphertext
// for another keyworker, a share of another threshold, a combination
// whose check value fails, or a share stored in clear.
func TestBadSharesTryNoLogin(t *testing.T) {
	t.Parallel()
	const pin = "right-pin-4321"
	kv := openKV(t)
	kw := startSealed(t, kv, pin, Config{Threshold: 2})
	rec := kw.rec
	shares, err := SplitPIN(pin, testPool, 5, 2)
	if err != nil {
		t.Fatal(err)
	}
	other, err := SplitPIN(pin, "p2", 5, 2)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := NewKeyPair(testPool)
	if err != nil {
		t.Fatal(err)
	}
	strangerRec := stranger.Record(StateSealed, "", time.Time{}, time.Now())
	put := func(key string, v any) {
		t.Helper()
		b, ok := v.([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(v); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := kv.Put(t.Context(), key, b); err != nil {
			t.Fatal(err)
		}
	}
	seal := func(x int, line string) SealedShare {
		t.Helper()
		ss, err := encryptLine(rec, x, []byte(line))
		if err != nil {
			t.Fatal(err)
		}
		return ss
	}
	forStranger, err := Encrypt(strangerRec, shares[0])
	if err != nil {
		t.Fatal(err)
	}
	forStranger.Keyworker, forStranger.Fingerprint = rec.Keyworker, rec.Fingerprint // relabelled to us
	relabelled := shares[1]
	relabelled.Threshold = 3
	altered := shares[3]
	altered.Share.Y = append([]byte(nil), altered.Share.Y...)
	altered.Share.Y[2] ^= 0x40
	key := func(x int) string { return shared.UnsealShareKey(testPool, rec.Keyworker, x) }

	if _, err := Encrypt(rec, other[0]); !errors.Is(err, ErrOtherPool) {
		t.Fatalf("a share of another pool encrypted: %v", err)
	}
	put(key(1), []byte("not an encrypted share"))
	put(key(2), seal(2, "sovkeys-share:v2:garbage"))
	put(key(3), seal(3, other[2].Encode()))  // p2's share 3 sent to p1
	put(key(4), seal(4, shares[4].Encode())) // share 5 stored as share 4
	put(key(5), forStranger)
	put(key(6), seal(2, shares[1].Encode())) // stored under another index than its info binds
	put(shared.UnsealShareKey(testPool, rec.Keyworker, 2), seal(2, relabelled.Encode()))
	put(testPool+".1", []byte(shares[0].Encode())) // in clear, as an older CLI stored it
	noShares(t, kv, testPool+".1")
	submit(t, kv, rec, shares[0], altered) // combine, check value fails
	noShares(t, kv)
	if n := len(kw.tries()); n != 0 {
		t.Fatalf("%d HSM logins tried for bad shares", n)
	}
	if st, err := ReadLoginState(t.Context(), kv, testPool, time.Now); err != nil || st.Failed != 0 {
		t.Fatalf("login budget spent by bad shares: %+v %v", st, err)
	}
	submit(t, kv, rec, shares[2], shares[1])
	kw.waitUnsealed(t)
	if got := kw.tries(); len(got) != 1 || got[0] != pin {
		t.Fatalf("%d PIN tries, want exactly one", len(got))
	}
}

// Five wrong share sets (v1: no check value) cost at most three failed
// logins, counted in KV so that every keyworker of the pool shares the
// budget: a second keyworker started meanwhile is locked too, and the
// right shares unseal it once the window has passed.
func TestFailedLoginsBoundedPerPool(t *testing.T) {
	t.Parallel()
	const pin = "the-right-pin-1"
	kv := openKV(t)
	clk := &clock{t: time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)}
	cfg := Config{Threshold: 2, MaxFailedLogins: 3, Now: clk.Now}
	kw := startSealed(t, kv, pin, cfg)
	for i := range 5 {
		// Each set from its own wrong PIN; distinct indices so no share
		// overwrites one not yet read.
		lines := v1Lines(t, fmt.Sprintf("wrong-pin-%d", i), testPool, 10, 2)
		submit(t, kv, kw.rec, parseAll(t, lines[2*i:2*i+2]...)...)
	}
	noShares(t, kv)
	// A malformed share behind them: once it is gone, all five sets were handled.
	if _, err := kv.Put(t.Context(), shared.UnsealShareKey(testPool, kw.rec.Keyworker, 200), []byte("x")); err != nil {
		t.Fatal(err)
	}
	noShares(t, kv)
	if n := len(kw.tries()); n != 3 {
		t.Fatalf("%d failed logins for five wrong share sets, want 3", n)
	}
	st, err := ReadLoginState(t.Context(), kv, testPool, clk.Now)
	if err != nil || st.Failed != 3 || !st.Until.Equal(clk.Now().Add(LoginWindow)) {
		t.Fatalf("budget %+v %v", st, err)
	}
	recs, err := PublishedKeys(t.Context(), kv, testPool)
	if err != nil || len(recs) != 1 || recs[0].State != StateLocked {
		t.Fatalf("locked state not published: %+v %v", recs, err)
	}

	// Another keyworker of the pool: the right shares are refused too.
	second := startSealed(t, kv, pin, cfg)
	right, err := SplitPIN(pin, testPool, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	submit(t, kv, second.rec, right[0], right[1])
	noShares(t, kv)
	testkit.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		recs, err := PublishedKeys(t.Context(), kv, testPool)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if r.Keyworker == second.rec.Keyworker && r.State == StateLocked {
				return nil
			}
		}
		return errors.New("second keyworker not locked")
	})
	if n := len(second.tries()); n != 0 {
		t.Fatalf("locked pool tried %d logins", n)
	}
	clk.Add(LoginWindow + time.Minute)
	submit(t, kv, second.rec, right[2], right[0])
	second.waitUnsealed(t)
	if got := second.tries(); len(got) != 1 || got[0] != pin {
		t.Fatalf("after the window: %d tries", len(got))
	}
	if n := len(kw.tries()); n != 3 {
		t.Fatalf("first keyworker tried %d logins", n)
	}
}

func TestRecipientsPinning(t *testing.T) {
	t.Parallel()
	a, _ := NewKeyPair(testPool)
	b, _ := NewKeyPair(testPool)
	now := time.Now()
	recs := []KeyRecord{a.Record(StateSealed, "", time.Time{}, now), b.Record(StateSealed, "", time.Time{}, now)}
	if got, err := Recipients(testPool, recs, nil); err != nil || len(got) != 2 {
		t.Fatalf("unpinned: %d, %v", len(got), err)
	}
	if got, err := Recipients(testPool, recs, []string{b.FP}); err != nil || len(got) != 1 || got[0].Keyworker != b.ID {
		t.Fatalf("pinned: %+v, %v", got, err)
	}
	if _, err := Recipients(testPool, recs, []string{"00000000deadbeef"}); !errors.Is(err, ErrNoKeyworker) {
		t.Fatalf("a pin matching no published key: %v", err)
	}
	if _, err := Recipients(testPool, nil, nil); !errors.Is(err, ErrNoKeyworker) {
		t.Fatalf("no published key: %v", err)
	}
	forged := recs[0]
	forged.Fingerprint = b.FP // a record claiming another key's fingerprint
	if err := forged.Check(); err == nil {
		t.Fatal("a record whose fingerprint is not its key's passed")
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, c := range []Config{
		{Pool: testPool, Threshold: 1},
		{Pool: testPool, Threshold: 256},
		{Pool: "Bad", Threshold: 2},
		{Pool: testPool, Threshold: 2, MaxFailedLogins: -1},
		{Pool: testPool, Threshold: 2, MaxFailedLogins: 101},
		{Pool: testPool, Threshold: 2, Republish: LoginWindow},
	} {
		if err := c.Validate(); !errors.Is(err, shared.ErrConfigValidation) {
			t.Errorf("%+v accepted: %v", c, err)
		}
	}
	if err := (Config{Pool: testPool, Threshold: 2}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// An unreadable budget entry is a spent budget: no login is tried.
func TestUnreadableBudgetFailsClosed(t *testing.T) {
	t.Parallel()
	kv := openKV(t)
	if _, err := kv.Put(t.Context(), shared.UnsealLoginsKey(testPool), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	b := &budget{kv: kv, pool: testPool, max: 3, now: time.Now}
	var le *LockedError
	if _, err := b.reserve(t.Context(), "kw1"); !errors.As(err, &le) {
		t.Fatalf("reserve on an unreadable budget: %v", err)
	}
	if st, err := ReadLoginState(t.Context(), kv, testPool, time.Now); err != nil || st.Failed < maxFailedLoginsLimit {
		t.Fatalf("state of an unreadable budget: %+v %v", st, err)
	}
}
