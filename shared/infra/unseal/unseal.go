// Package unseal gets an HSM user PIN into a keyworker without it ever being
// readable anywhere but in that keyworker's memory: custodians hold Shamir
// shares of the PIN (this file); a sealed keyworker publishes an ephemeral
// HPKE public key (seal.go); `sovkeys unseal` encrypts each share to that
// key and stores only the ciphertext in a memory-storage KV bucket
// (submit.go); the keyworker opens and combines the shares, checks the PIN
// against the check value split with it, and tries C_Login only within a
// cluster-wide budget of failed logins per pool (budget.go, await.go).
package unseal

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/crypto/shamir"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// Bucket holds published keyworker keys, encrypted shares and the failed
// login budget; memory storage only, entries expire after an hour.
const Bucket = shared.BucketUnseal

const (
	prefixV1 = "sovkeys-share:v1:"
	prefixV2 = "sovkeys-share:v2:"
	// setBytes: random bytes of a v2 share set id (the key of its check).
	setBytes = 12
	// checkBytes: length of the PIN check value split with the PIN.
	checkBytes = 16
)

var (
	// ErrShare is wrapped by share parsing and combining errors.
	ErrShare = errors.New("unseal: invalid share")
	// ErrCheck: the shares combined to a secret that is not the PIN they
	// were split from (a wrong, altered or relabelled share). No HSM login
	// is tried.
	ErrCheck = errors.New("unseal: the shares do not combine to the PIN they were split from (check value mismatch)")
)

// Share is a parsed share of a pool's HSM PIN.
//
// Version 2 shares carry Set, a random id common to the shares of one
// split, and their y bytes share PIN ‖ check, where check is
// HMAC-SHA256(Set, pool, k, PIN) truncated to 16 bytes: a wrong combination
// is caught before C_Login. The check value is split with the PIN rather
// than written in clear in each line, so that one custodian holding one
// share gets no offline oracle to guess a short HSM PIN with.
// Version 1 shares (made before) have neither: only the login budget
// protects the HSM from them.
type Share struct {
	Version   int // 1 or 2
	Pool      string
	Threshold int
	Set       string // v2: base64url share set id; v1: ""
	Share     shamir.Share
}

// Encode renders a share as one line:
// sovkeys-share:v2:<pool>:<k>:<x>:<set>:<base64url y> (v1 lines have no set).
func (s Share) Encode() string {
	y := base64.RawURLEncoding.EncodeToString(s.Share.Y)
	if s.Version == 1 {
		return fmt.Sprintf("%s%s:%d:%d:%s", prefixV1, s.Pool, s.Threshold, s.Share.X, y)
	}
	return fmt.Sprintf("%s%s:%d:%d:%s:%s", prefixV2, s.Pool, s.Threshold, s.Share.X, s.Set, y)
}

// Parse reads an encoded share of either version.
func Parse(line string) (Share, error) {
	line = strings.TrimSpace(line)
	var s Share
	var parts []string
	if rest, ok := strings.CutPrefix(line, prefixV2); ok {
		s.Version, parts = 2, strings.Split(rest, ":")
		if len(parts) != 5 {
			return Share{}, fmt.Errorf("%w: malformed (a v2 share has 5 fields after %q)", ErrShare, prefixV2)
		}
		if set, err := base64.RawURLEncoding.DecodeString(parts[3]); err != nil || len(set) != setBytes {
			return Share{}, fmt.Errorf("%w: malformed share set id", ErrShare)
		}
		s.Set = parts[3]
		parts = append(parts[:3], parts[4])
	} else if rest, ok := strings.CutPrefix(line, prefixV1); ok {
		s.Version, parts = 1, strings.Split(rest, ":")
		if len(parts) != 4 {
			return Share{}, fmt.Errorf("%w: malformed (a v1 share has 4 fields after %q)", ErrShare, prefixV1)
		}
	} else {
		return Share{}, fmt.Errorf("%w: it must start with %q (or %q)", ErrShare, prefixV2, prefixV1)
	}
	if !shared.ValidPoolName(parts[0]) {
		return Share{}, fmt.Errorf("%w: malformed pool name", ErrShare)
	}
	k, err1 := strconv.Atoi(parts[1])
	x, err2 := strconv.Atoi(parts[2])
	y, err3 := base64.RawURLEncoding.DecodeString(parts[3])
	minY := 1
	if s.Version == 2 {
		minY = checkBytes + 1
	}
	if err1 != nil || err2 != nil || err3 != nil || k < 2 || k > 255 || x < 1 || x > 255 || len(y) < minY {
		return Share{}, fmt.Errorf("%w: malformed", ErrShare)
	}
	s.Pool, s.Threshold, s.Share = parts[0], k, shamir.Share{X: byte(x), Y: y}
	return s, nil
}

// SplitPIN makes n version 2 shares of pin, k of which unseal pool.
func SplitPIN(pin, pool string, n, k int) ([]Share, error) {
	if pin == "" {
		return nil, fmt.Errorf("%w: empty PIN", ErrShare)
	}
	if !shared.ValidPoolName(pool) {
		return nil, fmt.Errorf("%w: pool %q must be 1-32 chars of [a-z0-9_]", ErrShare, pool)
	}
	raw := make([]byte, setBytes)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("unseal: random: %w", err)
	}
	set := base64.RawURLEncoding.EncodeToString(raw)
	secret := append([]byte(pin), pinCheck(set, pool, k, []byte(pin))...)
	defer clear(secret)
	parts, err := shamir.Split(secret, n, k)
	if err != nil {
		return nil, err
	}
	out := make([]Share, len(parts))
	for i, p := range parts {
		out[i] = Share{Version: 2, Pool: pool, Threshold: k, Set: set, Share: p}
	}
	return out, nil
}

// pinCheck is the check value of a v2 split.
func pinCheck(set, pool string, k int, pin []byte) []byte {
	m := hmac.New(sha256.New, []byte(set))
	m.Write([]byte("sovkeys-unseal-pin-check:v2\x00" + pool + "\x00" + strconv.Itoa(k) + "\x00"))
	m.Write(pin)
	return m.Sum(nil)[:checkBytes]
}

// SameSplit reports why shares cannot come from one split: another pool,
// threshold, version or share set, or a repeated index; nil when they can.
func SameSplit(shares []Share) error {
	seen := map[byte]bool{}
	for _, s := range shares {
		f := shares[0]
		switch {
		case s.Pool != f.Pool:
			return fmt.Errorf("%w: shares of pools %q and %q", ErrShare, f.Pool, s.Pool)
		case s.Threshold != f.Threshold:
			return fmt.Errorf("%w: shares of thresholds %d and %d", ErrShare, f.Threshold, s.Threshold)
		case s.Version != f.Version || s.Set != f.Set:
			return fmt.Errorf("%w: shares of different splits of the PIN (their share set ids differ)", ErrShare)
		case seen[s.Share.X]:
			return fmt.Errorf("%w: share %d given twice", ErrShare, s.Share.X)
		}
		seen[s.Share.X] = true
	}
	return nil
}

// Combine rebuilds the PIN from shares of one split. For v2 shares the
// check value must match (ErrCheck otherwise); v1 shares are unchecked.
// The caller clears the returned buffer.
func Combine(shares []Share) ([]byte, error) {
	if len(shares) == 0 {
		return nil, fmt.Errorf("%w: no shares", ErrShare)
	}
	if err := SameSplit(shares); err != nil {
		return nil, err
	}
	parts := make([]shamir.Share, len(shares))
	for i, s := range shares {
		parts[i] = s.Share
	}
	secret, err := shamir.Combine(parts)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrShare, err)
	}
	f := shares[0]
	if f.Version == 1 {
		return secret, nil
	}
	if len(secret) <= checkBytes {
		clear(secret)
		return nil, ErrCheck
	}
	pin, check := secret[:len(secret)-checkBytes], secret[len(secret)-checkBytes:]
	if subtle.ConstantTimeCompare(check, pinCheck(f.Set, f.Pool, f.Threshold, pin)) != 1 {
		clear(secret)
		return nil, ErrCheck
	}
	clear(check)
	return pin, nil
}

// Open declares (if needed) the memory-storage unseal bucket.
func Open(ctx context.Context, js jetstream.JetStream, t mesh.Topology) (jetstream.KeyValue, error) {
	kv, err := mesh.BindKV(ctx, js, mesh.UnsealBucketConfig(t))
	if err != nil {
		return nil, fmt.Errorf("unseal: bucket: %w", err)
	}
	return kv, nil
}
