package shared

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nkeys"
)

// Signed work (docs/security.md, "Trust boundaries"). authn signs every work
// item it queues for a keyworker pool: Ed25519 over the SHA-256 of the exact
// bytes the keyworker decodes (the framed envelope), bound to the pool, the
// request id and the time of signing. The signature travels in the
// HeaderWorkSignature header as "<key> <unix nanoseconds> <base64url sig>".
// Keys are nkeys of the server type (public "N...", seed "SN..."): `cluster
// init` makes authn's (standalone: at start), and the bootstrap identity
// pins its public key in the roster bucket (WorkKeyPin). A keyworker refuses
// work that is unsigned, signed by a key not pinned, signed for another
// pool or request, older than WorkSigMaxAge, from the future beyond
// WorkSigMaxSkew, or a second stored copy of work it has seen
// (WorkVerifier); every refusal is audited by the keyworker.

// HeaderWorkSignature carries authn's signature of a work item.
const HeaderWorkSignature = "Sovkeys-Work-Sig"

// WorkSigMaxAge bounds how long signed work stays acceptable: longer than
// any request deadline (the keyworker drops expired work anyway) plus the
// clock skew between authn's and the keyworker's hosts.
const WorkSigMaxAge = 2 * time.Minute

// WorkSigMaxSkew is how far in the future a work signature's time may be.
const WorkSigMaxSkew = 30 * time.Second

// WorkKeyPinPrefix + public key is the roster bucket (BucketOperators) key
// pinning one authn work-signing key; only the bootstrap identity writes it.
const WorkKeyPinPrefix = "workkey."

// WorkKeyPin is the roster bucket key pinning work-signing key pub.
func WorkKeyPin(pub string) string { return WorkKeyPinPrefix + pub }

// WorkKeyFile is the file name of authn's work-signing key seed, written
// beside its NATS credential (creds/authn.workkey) by `cluster init` and by
// a standalone node at start.
const WorkKeyFile = "authn.workkey"

// ErrWorkSignature is wrapped by every refusal of WorkVerifier.Verify.
var ErrWorkSignature = errors.New("work signature refused")

// workDigest is what a work signature covers.
func workDigest(pool, id string, at int64, data []byte) []byte {
	h := sha256.New()
	var n [8]byte
	for _, f := range []string{"sovkeys-work-v1", pool, id} {
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	binary.BigEndian.PutUint64(n[:], uint64(at))
	h.Write(n[:])
	d := sha256.Sum256(data)
	h.Write(d[:])
	return h.Sum(nil)
}

// WorkSigner signs work items with one Ed25519 key.
type WorkSigner struct {
	pub  string
	priv ed25519.PrivateKey
	now  func() time.Time
}

// NewWorkSigner signs with the nkey seed seed ("SN...").
func NewWorkSigner(seed []byte, now func() time.Time) (*WorkSigner, error) {
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("%w: work key: %v", ErrConfigValidation, err)
	}
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicServerKey(pub) {
		return nil, fmt.Errorf("%w: work key: not a server nkey seed", ErrConfigValidation)
	}
	raw, err := kp.PrivateKey()
	if err != nil {
		return nil, fmt.Errorf("%w: work key: %v", ErrConfigValidation, err)
	}
	priv, err := nkeys.Decode(nkeys.PrefixBytePrivate, raw)
	if err != nil || len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: work key: bad private key", ErrConfigValidation)
	}
	if now == nil {
		now = time.Now
	}
	return &WorkSigner{pub: pub, priv: ed25519.PrivateKey(priv), now: now}, nil
}

// LoadWorkSigner reads a work key seed file.
func LoadWorkSigner(path string, now func() time.Time) (*WorkSigner, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: work key: %v", ErrConfigValidation, err)
	}
	defer clear(b)
	return NewWorkSigner([]byte(strings.TrimSpace(string(b))), now)
}

// EnsureWorkKey makes a work key seed file at path (0600) unless one is
// there, and returns its public key.
func EnsureWorkKey(path string) (pub string, created bool, err error) {
	if s, err := LoadWorkSigner(path, nil); err == nil {
		return s.pub, false, nil
	} else if _, serr := os.Stat(path); serr == nil {
		return "", false, err // present but unreadable: never replaced silently
	}
	kp, err := nkeys.CreateServer()
	if err != nil {
		return "", false, fmt.Errorf("work key: %w", err)
	}
	seed, _ := kp.Seed()
	defer clear(seed)
	pub, _ = kp.PublicKey()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("work key: %w", err)
	}
	if err := os.WriteFile(path, append(seed, '\n'), 0o600); err != nil {
		return "", false, fmt.Errorf("work key: %w", err)
	}
	return pub, true, nil
}

// PublicKey is the signer's public nkey ("N...").
func (s *WorkSigner) PublicKey() string { return s.pub }

// Sign returns the HeaderWorkSignature value of work data (a framed
// envelope) with request id id for pool.
func (s *WorkSigner) Sign(pool, id string, data []byte) string {
	at := s.now().UnixNano()
	sig := ed25519.Sign(s.priv, workDigest(pool, id, at, data))
	return s.pub + " " + strconv.FormatInt(at, 10) + " " + base64.RawURLEncoding.EncodeToString(sig)
}

// WorkVerifier checks work signatures against the pinned keys and refuses
// a second stored copy of a work item (replay).
type WorkVerifier struct {
	Pool string
	Now  func() time.Time

	keys atomic.Pointer[map[string]ed25519.PublicKey]

	mu   sync.Mutex
	seen map[string]seenWork // request id -> where it was first delivered
	old  map[string]seenWork // the previous generation (rotated every WorkSigMaxAge)
	gen  time.Time
}

// seenWork is the stored message a request id was first delivered as.
type seenWork struct {
	stream string
	seq    uint64
}

// SetKeys replaces the pinned keys (public nkeys "N..."); invalid ones are
// skipped and returned.
func (v *WorkVerifier) SetKeys(pubs []string) (bad []string) {
	m := make(map[string]ed25519.PublicKey, len(pubs))
	for _, p := range pubs {
		raw, err := nkeys.Decode(nkeys.PrefixByteServer, []byte(p))
		if err != nil || len(raw) != ed25519.PublicKeySize {
			bad = append(bad, p)
			continue
		}
		m[p] = ed25519.PublicKey(raw)
	}
	v.keys.Store(&m)
	return bad
}

// Keys is the number of pinned keys.
func (v *WorkVerifier) Keys() int {
	if m := v.keys.Load(); m != nil {
		return len(*m)
	}
	return 0
}

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrWorkSignature, fmt.Sprintf(format, args...))
}

// Verify checks header (HeaderWorkSignature) over data, whose envelope has
// request id id, delivered from stream at sequence seq (a redelivery of
// the same message is not a replay; another stored copy is).
func (v *WorkVerifier) Verify(id string, data []byte, header, stream string, seq uint64) error {
	if header == "" {
		return refuse("work item is not signed")
	}
	keyPart, rest, ok1 := strings.Cut(header, " ")
	atPart, sigPart, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return refuse("work signature is malformed")
	}
	var pub ed25519.PublicKey
	if m := v.keys.Load(); m != nil {
		pub = (*m)[keyPart]
	}
	if pub == nil {
		return refuse("work signed by a key that is not pinned (%.12s…)", keyPart)
	}
	at, err := strconv.ParseInt(atPart, 10, 64)
	if err != nil {
		return refuse("work signature time is malformed")
	}
	now := v.Now()
	signed := time.Unix(0, at)
	switch {
	case signed.Before(now.Add(-WorkSigMaxAge)):
		return refuse("work signed at %s is stale (now %s)", signed.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case signed.After(now.Add(WorkSigMaxSkew)):
		return refuse("work signed at %s is in the future (now %s)", signed.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	sig, err := base64.RawURLEncoding.DecodeString(sigPart)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return refuse("work signature is malformed")
	}
	if !ed25519.Verify(pub, workDigest(v.Pool, id, at, data), sig) {
		return refuse("work signature does not verify (another pool, request or body)")
	}
	return v.once(id, stream, seq, now)
}

// once records the delivery of id; a second stored copy is a replay.
func (v *WorkVerifier) once(id, stream string, seq uint64, now time.Time) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.seen == nil || now.Sub(v.gen) > WorkSigMaxAge+WorkSigMaxSkew {
		// Two generations cover at least the window a signature is
		// accepted in: older ids are refused as stale before this.
		v.old, v.seen, v.gen = v.seen, map[string]seenWork{}, now
	}
	at := seenWork{stream: stream, seq: seq}
	prev, ok := v.seen[id]
	if !ok {
		prev, ok = v.old[id]
	}
	if ok && prev != at {
		return refuse("work item %s replayed (already delivered as %s #%d)", id, prev.stream, prev.seq)
	}
	v.seen[id] = at
	return nil
}
