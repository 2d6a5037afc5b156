package mesh

// Waiting for NATS and JetStream instead of exiting: a cluster starting in
// any order, or losing its meta leader, answers "no responders", "no meta
// leader", timeouts and stream-lookup deadlines for a while. Services retry
// their connection and declarations with bounded backoff, logging each
// failure, and stay unready meanwhile; only errors no wait can fix
// (configuration, missing files, refused credentials) end the process.

import (
	"context"
	"crypto/x509"
	"errors"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
)

// Backoff bounds the waits between attempts: Min doubling up to Max, with
// up to 25 % random jitter so restarted processes do not retry in step.
type Backoff struct{ Min, Max time.Duration }

// DefaultBackoff is what services use at start and after losing NATS.
var DefaultBackoff = Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}

// Delay is the wait before attempt n+1 (n counts from 0).
func (b Backoff) Delay(n int) time.Duration {
	d := b.Min
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return d + time.Duration(rand.Int64N(int64(d)/4+1))
}

// Permanent reports whether err cannot be cured by waiting: a configuration
// error, a missing or unreadable file, a certificate problem, a listen
// address in use, or credentials the server refuses.
func Permanent(err error) bool {
	if err == nil {
		return false
	}
	var opErr *net.OpError
	var certErr x509.CertificateInvalidError
	var unknownAuth x509.UnknownAuthorityError
	switch {
	case errors.Is(err, shared.ErrConfigValidation), errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission),
		errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked),
		errors.Is(err, nats.ErrAccountAuthExpired),
		errors.As(err, &certErr), errors.As(err, &unknownAuth):
		return true
	case errors.As(err, &opErr) && opErr.Op == "listen":
		return true
	}
	return false
}

// Retry calls fn until it succeeds, fails permanently or ctx ends; between
// attempts it logs the failure and waits b.Delay. It never gives up on a
// timeout or an unavailable cluster.
func Retry(ctx context.Context, logger *slog.Logger, what string, b Backoff, fn func(ctx context.Context) error) error {
	for n := 0; ; n++ {
		err := fn(ctx)
		if err == nil || Permanent(err) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := b.Delay(n)
		logger.WarnContext(ctx, "dependency not ready; retrying", "what", what, "attempt", n+1, "retry_in", d.Round(time.Millisecond), "err", err)
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}

// Supervise runs attempt until ctx ends: an attempt that fails (its
// dependencies went away, or were never there) is cancelled, logged and run
// again after a backoff, which restarts from Min once an attempt has lasted
// longer than Max (it was up). A permanent error is returned.
func Supervise(ctx context.Context, logger *slog.Logger, what string, b Backoff, now func() time.Time, attempt func(ctx context.Context) error) error {
	n := 0
	for {
		actx, cancel := context.WithCancel(ctx)
		start := now()
		err := attempt(actx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			return nil
		}
		if Permanent(err) {
			return err
		}
		if now().Sub(start) > b.Max {
			n = 0
		}
		d := b.Delay(n)
		n++
		logger.WarnContext(ctx, "service lost a dependency; restarting it", "what", what, "attempt", n, "retry_in", d.Round(time.Millisecond), "err", err)
		if sleep(ctx, d) != nil {
			return nil
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
