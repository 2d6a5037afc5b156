package unseal

// Shares travel and rest only encrypted to the ephemeral key of the sealed
// keyworker process that asked for them: HPKE (RFC 9180, Go's crypto/hpke),
// base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The info
// string binds the pool, the keyworker process id, its key fingerprint and
// the share index, so a ciphertext copied to another key, pool or index
// does not open. The private key never leaves the process's memory: a
// restarted keyworker has a new key, and old ciphertexts are useless.

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
)

// ErrNotForThisKeyworker: an encrypted share made for another keyworker
// process, key or pool, or one that does not open with this process's key.
var ErrNotForThisKeyworker = errors.New("unseal: the encrypted share is not for this keyworker")

// ErrOtherPool: a share of another pool's PIN.
var ErrOtherPool = errors.New("unseal: a share of another pool")

// Key record states a sealed keyworker publishes.
const (
	StateSealed = "sealed" // waiting for shares
	StateLocked = "locked" // the pool's failed-login budget is spent
)

// KeyRecord is what a sealed keyworker process publishes under
// shared.UnsealKeyKey: its public key and its state.
type KeyRecord struct {
	Version     int       `json:"v"`
	Pool        string    `json:"pool"`
	Keyworker   string    `json:"keyworker"` // per-process id
	PublicKey   []byte    `json:"public_key"`
	Fingerprint string    `json:"fingerprint"`
	State       string    `json:"state"`
	Detail      string    `json:"detail,omitempty"`
	LockedUntil time.Time `json:"locked_until,omitzero"`
	Updated     time.Time `json:"updated"`
}

// Check validates a record read from the bucket: names, key length, and
// the fingerprint recomputed from the key (never trusted as stored).
func (r KeyRecord) Check() error {
	switch {
	case r.Version != 1:
		return fmt.Errorf("%w: keyworker key record version %d", ErrShare, r.Version)
	case !shared.ValidPoolName(r.Pool) || !validID(r.Keyworker):
		return fmt.Errorf("%w: malformed keyworker key record", ErrShare)
	case len(r.PublicKey) != 32 || r.Fingerprint != Fingerprint(r.PublicKey):
		return fmt.Errorf("%w: keyworker key record with a bad key or fingerprint", ErrShare)
	}
	return nil
}

// SealedShare is the stored value of one share encrypted to one keyworker
// process: only Ciphertext (HPKE enc ‖ AEAD ciphertext) holds share bytes.
type SealedShare struct {
	Version     int    `json:"v"`
	Pool        string `json:"pool"`
	Keyworker   string `json:"keyworker"`
	Fingerprint string `json:"fingerprint"`
	Index       int    `json:"x"`
	Ciphertext  []byte `json:"ct"`
}

// Fingerprint names a keyworker public key: the first 16 hex digits of
// its SHA-256, as the keyworker logs it and --keyworker-key pins it.
func Fingerprint(pub []byte) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// KeyPair is a sealed keyworker process's ephemeral key.
type KeyPair struct {
	Pool, ID, FP string
	pub          []byte
	priv         hpke.PrivateKey
}

// NewKeyPair makes the ephemeral key and a random process id.
func NewKeyPair(pool string) (*KeyPair, error) {
	if !shared.ValidPoolName(pool) {
		return nil, fmt.Errorf("%w: pool %q", shared.ErrConfigValidation, pool)
	}
	priv, err := hpke.DHKEM(ecdh.X25519()).GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("unseal: key: %w", err)
	}
	raw := make([]byte, 8)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("unseal: random: %w", err)
	}
	pub := priv.PublicKey().Bytes()
	return &KeyPair{Pool: pool, ID: hex.EncodeToString(raw), FP: Fingerprint(pub), pub: pub, priv: priv}, nil
}

// Record is the key record to publish, in state with detail.
func (k *KeyPair) Record(state, detail string, lockedUntil, now time.Time) KeyRecord {
	return KeyRecord{Version: 1, Pool: k.Pool, Keyworker: k.ID, PublicKey: k.pub, Fingerprint: k.FP,
		State: state, Detail: detail, LockedUntil: lockedUntil, Updated: now}
}

func hpkeInfo(pool, id, fp string, x int) []byte {
	return []byte("sovkeys-unseal-share:v1\x00" + pool + "\x00" + id + "\x00" + fp + "\x00" + strconv.Itoa(x))
}

// Encrypt encrypts share s to the keyworker of rec (checked first).
func Encrypt(rec KeyRecord, s Share) (SealedShare, error) {
	if err := rec.Check(); err != nil {
		return SealedShare{}, err
	}
	if s.Pool != rec.Pool {
		return SealedShare{}, fmt.Errorf("%w: a share of pool %q for a keyworker of pool %q", ErrOtherPool, s.Pool, rec.Pool)
	}
	line := []byte(s.Encode())
	defer clear(line)
	return encryptLine(rec, int(s.Share.X), line)
}

// encryptLine encrypts one share line as share x to rec's keyworker.
func encryptLine(rec KeyRecord, x int, line []byte) (SealedShare, error) {
	pk, err := hpke.DHKEM(ecdh.X25519()).NewPublicKey(rec.PublicKey)
	if err != nil {
		return SealedShare{}, fmt.Errorf("%w: keyworker public key: %v", ErrShare, err)
	}
	ct, err := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), hpkeInfo(rec.Pool, rec.Keyworker, rec.Fingerprint, x), line)
	if err != nil {
		return SealedShare{}, fmt.Errorf("unseal: encrypt: %w", err)
	}
	return SealedShare{Version: 1, Pool: rec.Pool, Keyworker: rec.Keyworker, Fingerprint: rec.Fingerprint, Index: x, Ciphertext: ct}, nil
}

// Open decrypts a share made for this process and checks it belongs to
// this pool and index. Errors wrap ErrNotForThisKeyworker or ErrShare.
func (k *KeyPair) Open(ss SealedShare) (Share, error) {
	if ss.Version != 1 || ss.Pool != k.Pool || ss.Keyworker != k.ID || ss.Fingerprint != k.FP {
		return Share{}, fmt.Errorf("%w: made for keyworker %q key %q of pool %q", ErrNotForThisKeyworker, ss.Keyworker, ss.Fingerprint, ss.Pool)
	}
	pt, err := hpke.Open(k.priv, hpke.HKDFSHA256(), hpke.AES256GCM(), hpkeInfo(k.Pool, k.ID, k.FP, ss.Index), ss.Ciphertext)
	if err != nil {
		return Share{}, fmt.Errorf("%w: it does not decrypt with this keyworker's key", ErrNotForThisKeyworker)
	}
	defer clear(pt)
	s, err := Parse(string(pt))
	if err != nil {
		return Share{}, err
	}
	switch {
	case s.Pool != k.Pool:
		return Share{}, fmt.Errorf("%w: a share of pool %q sent to pool %q", ErrOtherPool, s.Pool, k.Pool)
	case int(s.Share.X) != ss.Index:
		return Share{}, fmt.Errorf("%w: share %d stored as share %d", ErrShare, s.Share.X, ss.Index)
	}
	return s, nil
}

// validID: a keyworker process id is 1-32 chars of [a-z0-9].
func validID(id string) bool {
	return id != "" && len(id) <= 32 && strings.IndexFunc(id, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9')
	}) < 0
}
