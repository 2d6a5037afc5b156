// Package unseal gets an HSM user PIN into a keyworker without it ever being
// written anywhere: operators hold Shamir shares of the PIN, submit k of them
// to a memory-storage KV bucket, and the keyworker of that pool combines them
// in its own memory, logs in, and purges the shares.
package unseal

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/crypto/shamir"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// Bucket holds submitted shares; memory storage only, entries expire.
const Bucket = shared.BucketUnseal

const sharePrefix = "sovkeys-share:v1:"

// ErrShare is wrapped by share parsing errors.
var ErrShare = errors.New("unseal: invalid share")

// Share is a parsed share of a pool's HSM PIN.
type Share struct {
	Pool      string
	Threshold int
	Share     shamir.Share
}

// Encode renders a share as one line: sovkeys-share:v1:<pool>:<k>:<x>:<base64url y>.
func (s Share) Encode() string {
	return fmt.Sprintf("%s%s:%d:%d:%s", sharePrefix, s.Pool, s.Threshold, s.Share.X, base64.RawURLEncoding.EncodeToString(s.Share.Y))
}

// Parse reads an encoded share.
func Parse(line string) (Share, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), sharePrefix)
	if !ok {
		return Share{}, fmt.Errorf("%w: it must start with %q", ErrShare, sharePrefix)
	}
	parts := strings.Split(rest, ":")
	if len(parts) != 4 || !shared.ValidPoolName(parts[0]) {
		return Share{}, fmt.Errorf("%w: malformed", ErrShare)
	}
	k, err1 := strconv.Atoi(parts[1])
	x, err2 := strconv.Atoi(parts[2])
	y, err3 := base64.RawURLEncoding.DecodeString(parts[3])
	if err1 != nil || err2 != nil || err3 != nil || k < 2 || k > 255 || x < 1 || x > 255 || len(y) == 0 {
		return Share{}, fmt.Errorf("%w: malformed", ErrShare)
	}
	return Share{Pool: parts[0], Threshold: k, Share: shamir.Share{X: byte(x), Y: y}}, nil
}

// SplitPIN makes n shares of pin, k of which unseal pool.
func SplitPIN(pin, pool string, n, k int) ([]Share, error) {
	parts, err := shamir.Split([]byte(pin), n, k)
	if err != nil {
		return nil, err
	}
	out := make([]Share, len(parts))
	for i, p := range parts {
		out[i] = Share{Pool: pool, Threshold: k, Share: p}
	}
	return out, nil
}

// Open declares (if needed) the memory-storage share bucket.
func Open(ctx context.Context, js jetstream.JetStream, t mesh.Topology) (jetstream.KeyValue, error) {
	kv, err := mesh.BindKV(ctx, js, mesh.UnsealBucketConfig(t))
	if err != nil {
		return nil, fmt.Errorf("unseal: bucket: %w", err)
	}
	return kv, nil
}

// Submit stores one share for its pool's keyworker.
func Submit(ctx context.Context, kv jetstream.KeyValue, s Share) error {
	if _, err := kv.Put(ctx, s.Pool+"."+strconv.Itoa(int(s.Share.X)), []byte(s.Encode())); err != nil {
		return fmt.Errorf("unseal: submit: %w", err)
	}
	return nil
}

// Await waits until threshold shares of pool are submitted, combines them
// in memory and calls try with the PIN. On success the shares are purged
// and Await returns; on failure (wrong shares) they are purged and Await
// waits for new ones. The PIN buffer is cleared after try.
//
// threshold is the keyworker's configuration (the k the PIN was split
// with), never the number a share claims: one share holder claiming a
// lower k would otherwise make the keyworker try PINs combined from too
// few shares, each a failed HSM login towards the token's lockout. A share
// claiming another threshold is refused.
func Await(ctx context.Context, kv jetstream.KeyValue, pool string, threshold int, logger *slog.Logger, try func(pin string) error) error {
	if threshold < 2 || threshold > 255 {
		return fmt.Errorf("%w: unseal threshold %d must be 2..255", shared.ErrConfigValidation, threshold)
	}
	w, err := kv.Watch(ctx, pool+".*")
	if err != nil {
		return fmt.Errorf("unseal: watch: %w", err)
	}
	defer func() { _ = w.Stop() }()
	shares := map[byte]Share{}
	logger.Warn("keyworker sealed: waiting for HSM PIN shares (sovkeys unseal --share ...)", "pool", pool)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("unseal: watch closed")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			s, err := Parse(string(e.Value()))
			if err != nil || s.Pool != pool {
				logger.Warn("ignoring an unusable unseal share", "key", e.Key())
				continue
			}
			if s.Threshold != threshold {
				logger.Warn("refusing an unseal share made for another threshold", "key", e.Key(), "share_threshold", s.Threshold, "threshold", threshold)
				_ = kv.Purge(ctx, e.Key())
				continue
			}
			shares[s.Share.X] = s
			k := threshold
			logger.Info("unseal share received", "pool", pool, "have", len(shares), "need", k)
			if len(shares) < k {
				continue
			}
			parts := make([]shamir.Share, 0, len(shares))
			for _, sh := range shares {
				parts = append(parts, sh.Share)
			}
			pinBytes, err := shamir.Combine(parts)
			purge(ctx, kv, shares)
			shares = map[byte]Share{}
			if err != nil {
				logger.Error("unseal shares do not combine; submit them again", "err", err)
				continue
			}
			pin := string(pinBytes)
			clear(pinBytes)
			if err := try(pin); err != nil {
				logger.Error("unseal failed: the combined PIN was refused; submit the right shares", "pool", pool)
				continue
			}
			logger.Info("keyworker unsealed", "pool", pool)
			return nil
		}
	}
}

func purge(ctx context.Context, kv jetstream.KeyValue, shares map[byte]Share) {
	for x, s := range shares {
		_ = kv.Purge(ctx, s.Pool+"."+strconv.Itoa(int(x)))
	}
}
