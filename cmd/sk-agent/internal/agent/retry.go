package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/sovkeys/sovkeys/shared/client/vsclient"
)

// Retry is the bounded backoff of every service call: at boot the network
// or the service may not be up yet.
type Retry struct {
	Attempts int           // total attempts, ≥ 1
	Initial  time.Duration // first wait
	Max      time.Duration // cap of one wait
	// CallTimeout bounds one attempt.
	CallTimeout time.Duration
}

// transient reports whether err is worth another attempt: no answer, or
// an answer that says "later" (429, 5xx). A refusal (other 4xx) or a bad
// signature is final: retrying cannot change it.
func transient(err error) bool {
	var api *vsclient.APIError
	if errors.As(err, &api) {
		return api.Status == http.StatusTooManyRequests || api.Status >= 500
	}
	return !errors.Is(err, vsclient.ErrBadSignature) && !errors.Is(err, context.Canceled)
}

// call runs f under r, sleeping with sleep between attempts. The last error
// of a transient failure is wrapped in ErrUnreachable.
func (r Retry) call(ctx context.Context, log *slog.Logger, sleep func(context.Context, time.Duration) error, what string, f func(context.Context) error) error {
	wait := r.Initial
	attempts := max(r.Attempts, 1)
	var err error
	for i := 1; i <= attempts; i++ {
		cctx, cancel := context.WithTimeout(ctx, r.CallTimeout)
		err = f(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if !transient(err) {
			var api *vsclient.APIError
			if errors.As(err, &api) {
				return fmt.Errorf("%s: the service refused the call: %w", what, err)
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		if ctx.Err() != nil {
			break
		}
		if i == attempts {
			break
		}
		log.Warn("service call failed; retrying", "call", what, "attempt", i, "of", attempts, "wait", wait, "err", err)
		if serr := sleep(ctx, wait); serr != nil {
			break
		}
		wait = min(wait*2, r.Max)
	}
	var api *vsclient.APIError
	if errors.As(err, &api) {
		return fmt.Errorf("%w: %s: still failing after %d attempts: %w", ErrUnreachable, what, attempts, err)
	}
	return fmt.Errorf("%w: %s: no answer after %d attempts: %w", ErrUnreachable, what, attempts, err)
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
