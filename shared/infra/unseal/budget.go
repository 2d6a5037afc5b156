package unseal

// The failed-login budget of a pool. HSMs lock a partition after a few
// wrong PINs (Luna: 3 to 10, then the SO must reset it), so every keyworker
// of a pool shares one budget, counted in JetStream KV with compare-and-set
// on the entry's revision, never in process memory: restarting keyworkers or
// running several does not reset it. An attempt is counted BEFORE C_Login
// and removed only when the login succeeds, so a process that dies in the
// middle of a login has spent its attempt.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// LoginWindow is the period the failed-login budget counts over. It equals
// the unseal bucket's TTL (mesh.UnsealBucketConfig), so the budget's entry
// never outlives the attempts it counts.
const LoginWindow = time.Hour

// DefaultMaxFailedLogins is the default budget per pool and LoginWindow.
const DefaultMaxFailedLogins = 3

// maxFailedLoginsLimit is the largest budget a pool may be configured with.
const maxFailedLoginsLimit = 100

// casRetries bounds compare-and-set rounds against other keyworkers.
const casRetries = 50

// LockedError: the pool's budget is spent; no login is tried until Until.
type LockedError struct {
	Pool   string
	Failed int
	Max    int
	Until  time.Time
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("unseal: pool %q is locked: %d failed HSM logins in the last %s (bound %d); no login is tried before %s",
		e.Pool, e.Failed, LoginWindow, e.Max, e.Until.UTC().Format(time.RFC3339))
}

// loginAttempt is one counted attempt (failed, or in progress).
type loginAttempt struct {
	At  time.Time `json:"at"`
	By  string    `json:"by"` // keyworker process id
	Ref string    `json:"ref"`
}

type loginRecord struct {
	Attempts []loginAttempt `json:"attempts"`
}

// LoginState is the pool's budget as stored.
type LoginState struct {
	Failed int       // attempts within the window
	Until  time.Time // when the oldest of them leaves the window
}

// budget is one pool's failed-login budget.
type budget struct {
	kv   jetstream.KeyValue
	pool string
	max  int
	now  func() time.Time
}

// load reads the pool's record (revision 0: none) without expired attempts.
func (b *budget) load(ctx context.Context) (loginRecord, uint64, error) {
	var rec loginRecord
	e, err := b.kv.Get(ctx, shared.UnsealLoginsKey(b.pool))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec, 0, nil
	}
	if err != nil {
		return rec, 0, fmt.Errorf("unseal: read login budget: %w", err)
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		// An unreadable budget is a spent one: fail closed, the keyworker
		// rewrites it only within the same compare-and-set.
		rec.Attempts = make([]loginAttempt, b.max)
		for i := range rec.Attempts {
			rec.Attempts[i] = loginAttempt{At: b.now(), By: "unreadable"}
		}
	}
	cut := b.now().Add(-LoginWindow)
	live := rec.Attempts[:0]
	for _, a := range rec.Attempts {
		if a.At.After(cut) {
			live = append(live, a)
		}
	}
	rec.Attempts = live
	return rec, e.Revision(), nil
}

func (rec loginRecord) state() LoginState {
	st := LoginState{Failed: len(rec.Attempts)}
	for _, a := range rec.Attempts {
		if until := a.At.Add(LoginWindow); st.Until.IsZero() || until.Before(st.Until) {
			st.Until = until
		}
	}
	return st
}

// store writes rec if the entry is still at rev; false on a conflict.
func (b *budget) store(ctx context.Context, rec loginRecord, rev uint64) (bool, error) {
	val, err := json.Marshal(rec)
	if err != nil {
		return false, err
	}
	key := shared.UnsealLoginsKey(b.pool)
	if rev == 0 {
		_, err = b.kv.Create(ctx, key, val)
	} else {
		_, err = b.kv.Update(ctx, key, val, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || mesh.IsWrongLastSequence(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("unseal: write login budget: %w", err)
	}
	return true, nil
}

// reserve counts one login attempt by process id, or returns a
// *LockedError when the budget is spent. The returned ref names the
// attempt for release.
func (b *budget) reserve(ctx context.Context, id string) (string, error) {
	raw := make([]byte, 8)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("unseal: random: %w", err)
	}
	ref := hex.EncodeToString(raw)
	for range casRetries {
		rec, rev, err := b.load(ctx)
		if err != nil {
			return "", err
		}
		if len(rec.Attempts) >= b.max {
			st := rec.state()
			return "", &LockedError{Pool: b.pool, Failed: st.Failed, Max: b.max, Until: st.Until}
		}
		rec.Attempts = append(rec.Attempts, loginAttempt{At: b.now(), By: id, Ref: ref})
		if ok, err := b.store(ctx, rec, rev); err != nil || ok {
			return ref, err
		}
	}
	return "", errors.New("unseal: login budget: too many concurrent updates")
}

// release removes attempt ref: its login succeeded.
func (b *budget) release(ctx context.Context, ref string) error {
	for range casRetries {
		rec, rev, err := b.load(ctx)
		if err != nil || rev == 0 {
			return err
		}
		kept := rec.Attempts[:0]
		for _, a := range rec.Attempts {
			if a.Ref != ref {
				kept = append(kept, a)
			}
		}
		rec.Attempts = kept
		if ok, err := b.store(ctx, rec, rev); err != nil || ok {
			return err
		}
	}
	return errors.New("unseal: login budget: too many concurrent updates")
}

// ReadLoginState reads pool's failed-login budget (for status displays).
func ReadLoginState(ctx context.Context, kv jetstream.KeyValue, pool string, now func() time.Time) (LoginState, error) {
	// An unreadable record counts as maxFailedLoginsLimit failures: locked
	// whatever the configured budget.
	b := &budget{kv: kv, pool: pool, max: maxFailedLoginsLimit, now: now}
	rec, _, err := b.load(ctx)
	return rec.state(), err
}
