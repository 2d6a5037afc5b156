package hsm

// Recovery from lost sessions and dead devices, idle keep-alive, and the
// session health the keyworker reports.
//
// A call whose session the HSM lost (closed or invalid handle, logged out,
// token removed, device error) gets a new session and is retried; when no
// session can be opened (the device is gone), opening is retried with
// exponential backoff until the call's deadline, and the call then fails
// with shared.ErrDependencyTimeout (HTTP 503 DependencyTimeoutException).

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

const (
	recoverBackoffMin = 10 * time.Millisecond
	recoverBackoffMax = time.Second
	// recoverAttempts bounds recovery when the caller set no deadline.
	recoverAttempts = 12
	// degradedFor: a pool that lost a session reports DEGRADED this long.
	degradedFor = time.Minute
)

// sessionState tracks the pool's troubles for Health.
type sessionState struct {
	mu         sync.Mutex
	lastLoss   time.Time
	lastErr    string
	failing    bool // the last recovery could not open a session
	recoveries int
}

// Health states (the XKS names).
const (
	HealthActive      = "ACTIVE"
	HealthDegraded    = "DEGRADED"
	HealthUnavailable = "UNAVAILABLE"
)

// SessionHealth reports the session pool's state: UNAVAILABLE while sessions
// cannot be reopened, DEGRADED for a minute after a session was lost or
// when the token gave fewer sessions than configured, else ACTIVE.
func (h *HSM) SessionHealth() (status, detail string) {
	h.state.mu.Lock()
	defer h.state.mu.Unlock()
	switch {
	case h.state.failing:
		return HealthUnavailable, "hsm sessions cannot be reopened: " + h.state.lastErr
	case !h.state.lastLoss.IsZero() && h.now().Sub(h.state.lastLoss) < degradedFor:
		return HealthDegraded, fmt.Sprintf("hsm session lost and replaced (%d recoveries)", h.state.recoveries)
	case h.nsess < h.cfg.Sessions:
		return HealthDegraded, fmt.Sprintf("token gave %d of %d sessions", h.nsess, h.cfg.Sessions)
	}
	return HealthActive, ""
}

func (h *HSM) noteLoss(err error, failing bool) {
	h.state.mu.Lock()
	defer h.state.mu.Unlock()
	h.state.lastLoss = h.now()
	h.state.failing = failing
	if err != nil {
		h.state.lastErr = ckrName(err)
	}
	if !failing {
		h.state.recoveries++
	}
}

// ckrName names a PKCS#11 error without any detail from the caller.
func ckrName(err error) string {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return e.Error()
	}
	return "not a pkcs#11 error"
}

// recoverSession replaces *sh after fn failed with lost, and retries fn,
// backing off while no session can be opened. It holds the caller's pool
// slot (and module lock) throughout, so a dead device never gets more
// callers at once than the pool has sessions.
func (h *HSM) recoverSession(ctx context.Context, sh *pkcs11.SessionHandle, lost error, fn func(pkcs11.SessionHandle) error) error {
	backoff := recoverBackoffMin
	err := lost
	for attempt := 1; ; attempt++ {
		h.logger.WarnContext(ctx, "hsm session lost, replacing it", "token", h.cfg.TokenLabel, "err", ckrName(err), "attempt", attempt)
		nsh, oerr := h.openSession()
		if oerr == nil {
			// The old handle is closed only now: a closed handle number
			// could be reused by another session of this process.
			_ = h.p11.CloseSession(*sh) // frees a stuck operation; fails harmlessly on a dead handle
			*sh = nsh
			h.keys.clear() // handles may not have survived whatever broke the session
			h.noteLoss(err, false)
			err = fn(nsh)
			if !isSessionLost(err) {
				return err
			}
			continue
		}
		h.noteLoss(oerr, true)
		if isCKR(oerr, pkcs11.CKR_SLOT_ID_INVALID, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_DEVICE_REMOVED) {
			h.refindSlot(ctx)
		}
		if attempt >= recoverAttempts {
			return fmt.Errorf("keyworker: hsm unavailable after %d attempts: %w: %w", attempt, shared.ErrDependencyTimeout, errors.Join(err, oerr))
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("keyworker: hsm unavailable: %w: %w", shared.ErrDependencyTimeout, errors.Join(err, oerr))
		case <-h.done:
			t.Stop()
			return ErrHSMClosed
		case <-t.C:
		}
		backoff = min(2*backoff, recoverBackoffMax)
	}
}

// refindSlot looks for the token again by label: a token that was removed
// and put back (or an HSM partition that was re-attached) may come back in
// another slot. The module itself is not re-initialised: other HSMs in the
// process share it.
func (h *HSM) refindSlot(ctx context.Context) {
	slot, found, err := findTokenSlot(h.p11, h.cfg.TokenLabel)
	if err != nil || !found {
		return
	}
	if old := h.slot.Swap(uint64(slot)); old != uint64(slot) {
		h.logger.WarnContext(ctx, "hsm token found in another slot", "token", h.cfg.TokenLabel, "old_slot", old, "slot", slot)
	}
}

// KeepAlive checks every idle session (C_GetSessionInfo, which also keeps
// HSMs with idle-session timeouts from dropping them) and replaces the ones
// the HSM lost. Busy sessions are skipped. The keyworker calls it
// periodically; it returns how many sessions it replaced.
func (h *HSM) KeepAlive(ctx context.Context) (replaced int, err error) {
	for range h.nsess {
		var sh pkcs11.SessionHandle
		select {
		case sh = <-h.pool:
		default:
			return replaced, nil // the rest are busy, hence alive
		}
		_, ierr := h.p11.GetSessionInfo(sh)
		if isSessionLost(ierr) {
			h.mod.objMu.RLock()
			// A session just opened needs no check.
			rerr := h.recoverSession(ctx, &sh, ierr, func(pkcs11.SessionHandle) error { return nil })
			h.mod.objMu.RUnlock()
			if rerr == nil {
				replaced++
			} else {
				err = rerr
			}
		}
		h.pool <- sh
		if err != nil {
			return replaced, err
		}
	}
	return replaced, nil
}
