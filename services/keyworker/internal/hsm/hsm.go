// Package hsm is the keyworker's PKCS#11 layer: one logged-in token with a
// pool of sessions (this file), AES keys (keys.go) and AES-GCM (aes.go),
// sealing of service secrets (seal.go), the volume-secret key hierarchy
// (hierarchy.go, sign.go, secrets.go, blob.go, oaep.go, cmkcache.go) and
// SoftHSMv2 provisioning (softhsm.go). Every call into the module goes
// through the P11 interface (p11.go) and a pooled session (withSession).
// Only the keyworker imports it.
package hsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// ErrHSMClosed is returned by operations on an HSM after Close.
var ErrHSMClosed = errors.New("keyworker: hsm closed")

// HSM is one logged-in token with a pool of sessions. It is safe for
// concurrent use; at most Sessions() operations reach the HSM at once.
type HSM struct {
	cfg    Config // holds the PIN for re-login of replaced sessions
	logger *slog.Logger
	mod    *module
	p11    P11
	slot   atomic.Uint64 // the token's slot; re-found when the token moves (sessions.go)

	pool  chan pkcs11.SessionHandle // exactly nsess handles circulate
	nsess int                       // cfg.Sessions, or fewer when the token's session limit was reached (sessions.go)
	done  chan struct{}             // closed by Close

	keys     keyCache
	state    sessionState // losses and recoveries, for health (sessions.go)
	versions versionCache // newest version per key label (versions.go)
	now      func() time.Time
	profile  Profile        // mechanisms and quirks of this HSM family (profiles.go)
	hier     hierarchyState // key hierarchy handles and CMK cache (hierarchy.go)
	wrapPad  uint           // RFC 5649 wrap mechanism of export/import (mechanisms.go, backup.go)

	closeOnce sync.Once
	closeErr  error
}

// Open loads the module (or shares it with other HSMs in the process),
// finds the token by label, opens cfg.Sessions sessions and logs in.
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (*HSM, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	profile, err := LookupProfile(cfg.Profile)
	if err != nil {
		return nil, err
	}
	cfg.IVFromHSM = cfg.IVFromHSM || profile.IVFromHSM
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("keyworker: open hsm: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	mod, err := modules.acquire(cfg.ModulePath)
	if err != nil {
		return nil, err
	}
	var p11 P11 = mod.ctx
	if cfg.WrapP11 != nil {
		p11 = cfg.WrapP11(p11)
	}
	h := &HSM{
		cfg:     cfg,
		logger:  logger,
		mod:     mod,
		p11:     p11,
		pool:    make(chan pkcs11.SessionHandle, cfg.Sessions),
		done:    make(chan struct{}),
		keys:    keyCache{max: maxCachedKeys},
		now:     cfg.Now,
		profile: profile,
	}
	if err := h.open(ctx); err != nil {
		for len(h.pool) > 0 {
			_ = h.p11.CloseSession(<-h.pool)
		}
		return nil, errors.Join(err, modules.release(mod))
	}
	logger.InfoContext(ctx, "hsm opened", "hsm", cfg, "slot", h.slot.Load())
	return h, nil
}

// ErrTokenNotFound: no slot holds a token of the label (yet: a token
// directory another process is writing, an HSM still starting).
var ErrTokenNotFound = errors.New("keyworker: hsm token not found")

// Transient reports whether Open failed for a reason that may pass by
// itself (the token not visible yet, a device or general error), so a
// process retries it. A login refusal is never transient: trying again
// spends the HSM's failed-login budget.
func Transient(err error) bool {
	if isCKR(err, pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE) {
		return false
	}
	return errors.Is(err, ErrTokenNotFound) ||
		isCKR(err, pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_SLOT_ID_INVALID, pkcs11.CKR_DEVICE_REMOVED)
}

func (h *HSM) open(ctx context.Context) error {
	slot, found, err := findTokenSlot(h.p11, h.cfg.TokenLabel)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: token %q not found in module %q", ErrTokenNotFound, h.cfg.TokenLabel, h.cfg.ModulePath)
	}
	h.slot.Store(uint64(slot))
	report, err := CheckMechanisms(h.p11, slot, h.profile)
	if err != nil {
		return err
	}
	if err := report.Err(h.cfg.TokenLabel); err != nil {
		return err
	}
	h.wrapPad = report.WrapPad
	for range h.cfg.Sessions {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("keyworker: open hsm: %w", err)
		}
		sh, err := h.openSession()
		if isCKR(err, pkcs11.CKR_SESSION_COUNT) && h.nsess > 0 {
			// Bounded opening: the token allows fewer sessions than asked
			// (other processes hold some). Run with what we have.
			h.logger.WarnContext(ctx, "hsm session limit reached; running with fewer sessions",
				"token", h.cfg.TokenLabel, "sessions", h.nsess, "wanted", h.cfg.Sessions)
			break
		}
		if err != nil {
			return err
		}
		h.pool <- sh
		h.nsess++
	}
	return nil
}

// openSession opens a read-write session and logs the user in. PKCS#11
// login state belongs to the application and token, not the session: once
// one session is logged in, every session of this process on the token is,
// and Login answers CKR_USER_ALREADY_LOGGED_IN (also when another HSM in this
// process holds the same token). The long-lived pooled sessions keep the
// login, and with it the object handles, valid.
func (h *HSM) openSession() (pkcs11.SessionHandle, error) {
	sh, err := h.p11.OpenSession(uint(h.slot.Load()), sessionFlags)
	if err != nil {
		return 0, fmt.Errorf("keyworker: open session on token %q: %w", h.cfg.TokenLabel, err)
	}
	if err := h.p11.Login(sh, pkcs11.CKU_USER, h.cfg.PIN); err != nil && !isCKR(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		_ = h.p11.CloseSession(sh)
		return 0, fmt.Errorf("keyworker: login to token %q: %w", h.cfg.TokenLabel, err)
	}
	return sh, nil
}

// findTokenSlot returns the slot holding the token labelled label. Two
// tokens with one label are an error: picking one would be a guess.
func findTokenSlot(p P11, label string) (slot uint, found bool, err error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, false, fmt.Errorf("keyworker: list slots: %w", err)
	}
	for _, s := range slots {
		info, err := p.GetTokenInfo(s)
		if err != nil {
			return 0, false, fmt.Errorf("keyworker: token info of slot %d: %w", s, err)
		}
		if info.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 || info.Label != label {
			continue
		}
		if found {
			return 0, false, fmt.Errorf("keyworker: more than one token labelled %q", label)
		}
		slot, found = s, true
	}
	return slot, found, nil
}

// Sessions is the size of the session pool: how many operations this HSM
// runs at once.
func (h *HSM) Sessions() int { return h.nsess }

// Close waits for in-flight operations, closes the sessions and releases the
// module (finalizing it when this was the last user). It is idempotent.
// Sessions are closed one by one: C_Logout or C_CloseAllSessions would also
// end the sessions of other HSMs in this process on the same token.
func (h *HSM) Close() error {
	h.closeOnce.Do(func() {
		close(h.done)
		var errs []error
		for range h.nsess {
			sh := <-h.pool
			if err := h.p11.CloseSession(sh); err != nil && !isSessionLost(err) {
				errs = append(errs, fmt.Errorf("keyworker: close session: %w", err))
			}
		}
		h.keys.clear()
		errs = append(errs, modules.release(h.mod))
		h.closeErr = errors.Join(errs...)
		h.logger.Info("hsm closed", "token", h.cfg.TokenLabel)
	})
	return h.closeErr
}

// withSession runs fn with a session from the pool, waiting for one while ctx
// allows, and returns it with defer. A session the HSM has lost (closed
// handle, logged out, operation stuck) is replaced and fn retried once.
func (h *HSM) withSession(ctx context.Context, fn func(pkcs11.SessionHandle) error) error {
	return h.session(ctx, false, fn)
}

// withSessionExclusive is withSession for calls that create token objects:
// fn runs while no other call uses the module (see module.objMu).
func (h *HSM) withSessionExclusive(ctx context.Context, fn func(pkcs11.SessionHandle) error) error {
	return h.session(ctx, true, fn)
}

func (h *HSM) session(ctx context.Context, exclusive bool, fn func(pkcs11.SessionHandle) error) error {
	if err := ctx.Err(); err != nil {
		return sessionWaitError(err)
	}
	var sh pkcs11.SessionHandle
	select {
	case <-h.done:
		return ErrHSMClosed
	case <-ctx.Done():
		return sessionWaitError(ctx.Err())
	case sh = <-h.pool:
	}
	defer func() { h.pool <- sh }() // sh may have been replaced below
	// select picks at random among ready cases: check again before touching the HSM.
	select {
	case <-h.done:
		return ErrHSMClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return sessionWaitError(err)
	}
	// Sessions are taken before the lock, in every caller, so the two never
	// wait on each other in opposite orders.
	if exclusive {
		h.mod.objMu.Lock()
		defer h.mod.objMu.Unlock()
	} else {
		h.mod.objMu.RLock()
		defer h.mod.objMu.RUnlock()
	}
	err := fn(sh)
	if !isSessionLost(err) {
		return err
	}
	return h.recoverSession(ctx, &sh, err, fn) // sessions.go
}

func sessionWaitError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("keyworker: waiting for hsm session: %w: %w", shared.ErrDependencyTimeout, err)
	}
	return fmt.Errorf("keyworker: waiting for hsm session: %w", err)
}
