package shared

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
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
//
// Sessions (the hot path's cost, docs/BENCHMARKS.md): an Ed25519 signature
// and its verification cost ~85 µs of CPU per work item, more than a tenth
// of an XKS answer. So authn signs, once per pool and WorkSessionLifetime,
// a session announcement (HeaderWorkSession: its key, a session id, the
// time, and a random 32-byte HMAC key encrypted to the pool's box key,
// which only the pool's keyworkers can open), and each work item carries
// HMAC-SHA256 under the session key of the same digest ("v2 <session>
// <unix ns> <mac>"). A keyworker verifies the announcement's Ed25519
// signature once (pinned key, this pool, fresh), opens the session key with
// its box key and caches it; every later item costs an HMAC. The session
// key is known to authn and to the pool's keyworkers only (who hold the
// pool's HSM anyway); every other check (pool, request, body, time,
// replay) is the same. Without a box key for the pool (keyworkers of an
// earlier version), authn signs each item with Ed25519 ("<key> <unix ns>
// <sig>").

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

// HeaderWorkSession carries the session announcement of a work item signed
// with a session key.
const HeaderWorkSession = "Sovkeys-Work-Session"

// WorkSessionLifetime is how long authn uses one session key for a pool;
// a keyworker accepts an announcement for that long plus WorkSigMaxAge.
const WorkSessionLifetime = 10 * time.Minute

// WorkBoxer encrypts a session key to pool's keyworkers (authn: to the
// pool's pinned box key), bound to the session id.
type WorkBoxer func(pool, session string, key []byte) ([]byte, error)

// WorkOpener reverses WorkBoxer on a keyworker of the pool.
type WorkOpener func(session string, boxed []byte) ([]byte, error)

// WorkSigner signs work items with one Ed25519 key, through per-pool
// session keys when the pool can receive them.
type WorkSigner struct {
	pub  string
	priv ed25519.PrivateKey
	now  func() time.Time

	mu       sync.Mutex
	sessions map[string]*workSession // pool -> current session
}

// workSession is authn's session with one pool (key nil: the pool takes
// none yet; items are signed one by one until until).
type workSession struct {
	id, announce string
	key          []byte
	until        time.Time
}

// sessionDigest is what a session announcement's signature covers.
func sessionDigest(pool, session string, issued int64, boxed []byte) []byte {
	return workDigest(pool, "session\x00"+session, issued, boxed)
}

// SignWork returns the HeaderWorkSignature and HeaderWorkSession values of
// work data with request id id for pool: an HMAC under the pool's session
// key, the session made (and its key boxed with box) when missing or
// older than WorkSessionLifetime. When box is nil or fails, the item is
// signed with Ed25519 and session is "".
func (s *WorkSigner) SignWork(pool, id string, data []byte, box WorkBoxer) (sig, session string) {
	now := s.now()
	ws := s.session(pool, now, box)
	if ws == nil || ws.key == nil {
		return s.Sign(pool, id, data), ""
	}
	at := now.UnixNano()
	mac := hmac.New(sha256.New, ws.key)
	mac.Write(workDigest(pool, id, at, data))
	return "v2 " + ws.id + " " + strconv.FormatInt(at, 10) + " " + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)), ws.announce
}

// session returns pool's current session, making one when needed.
func (s *WorkSigner) session(pool string, now time.Time, box WorkBoxer) *workSession {
	if box == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ws := s.sessions[pool]; ws != nil && now.Before(ws.until) {
		return ws
	}
	if s.sessions == nil {
		s.sessions = map[string]*workSession{}
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	id := rand.Text()
	boxed, err := box(pool, id, key)
	if err != nil {
		// The pool takes no session key (yet): sign items one by one and
		// ask again in a minute.
		ws := &workSession{until: now.Add(time.Minute)}
		s.sessions[pool] = ws
		return ws
	}
	issued := now.UnixNano()
	sig := ed25519.Sign(s.priv, sessionDigest(pool, id, issued, boxed))
	ws := &workSession{id: id, key: key, until: now.Add(WorkSessionLifetime),
		announce: s.pub + " " + id + " " + strconv.FormatInt(issued, 10) + " " +
			base64.RawURLEncoding.EncodeToString(boxed) + " " + base64.RawURLEncoding.EncodeToString(sig)}
	s.sessions[pool] = ws
	return ws
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
	// Open opens session keys boxed to this pool (nil: sessions refused).
	Open WorkOpener

	smu      sync.Mutex
	sessions map[string]verifiedSession // session id -> key

	keys atomic.Pointer[map[string]ed25519.PublicKey]

	mu   sync.Mutex
	seen map[string]seenWork // request id -> where it was first delivered
	old  map[string]seenWork // the previous generation (rotated every WorkSigMaxAge)
	gen  time.Time
	// The short tier: work whose deadline is near (replayShortGen).
	short, shortOld map[string]seenWork
	shortGen        time.Time
}

// replayShortGen is the generation of the replay set's short tier. Work
// that cannot be done after its deadline (the keyworker drops expired
// work without touching the HSM) need only be remembered until that
// deadline plus the clock skew allowed between hosts: work due within
// replayShortGen - WorkSigMaxSkew is kept in generations of this length
// (two of them: at least one whole generation), instead of the long
// tier's WorkSigMaxAge + WorkSigMaxSkew. At 1,000 answers/s that is about
// 70,000 ids instead of up to 300,000 (the set was a tenth of a node's
// live heap, and garbage collection made its tail: docs/BENCHMARKS.md).
const replayShortGen = WorkSigMaxSkew + 5*time.Second

// verifiedSession is a session whose announcement verified.
type verifiedSession struct {
	key    []byte
	pub    string // the pinned key that announced it
	issued time.Time
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

// Verify checks header (HeaderWorkSignature; session: HeaderWorkSession)
// over data, whose envelope has request id id, delivered from stream at
// sequence seq (a redelivery of the same message is not a replay; another
// stored copy is).
func (v *WorkVerifier) Verify(id string, data []byte, header, session, stream string, seq uint64) error {
	return v.VerifyUntil(id, data, header, session, stream, seq, time.Time{})
}

// VerifyUntil is Verify for work that cannot be done after until (the
// envelope's deadline; zero: no deadline): its id is remembered only as
// long as a replay could still be done (replayShortGen).
func (v *WorkVerifier) VerifyUntil(id string, data []byte, header, session, stream string, seq uint64, until time.Time) error {
	if header == "" {
		return refuse("work item is not signed")
	}
	if rest, ok := strings.CutPrefix(header, "v2 "); ok {
		return v.verifySession(id, data, rest, session, stream, seq, until)
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
	if err := fresh(at, now); err != nil {
		return err
	}
	sig, err := base64.RawURLEncoding.DecodeString(sigPart)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return refuse("work signature is malformed")
	}
	if !ed25519.Verify(pub, workDigest(v.Pool, id, at, data), sig) {
		return refuse("work signature does not verify (another pool, request or body)")
	}
	return v.once(id, stream, seq, now, until)
}

// fresh checks a signature time against now.
func fresh(at int64, now time.Time) error {
	signed := time.Unix(0, at)
	switch {
	case signed.Before(now.Add(-WorkSigMaxAge)):
		return refuse("work signed at %s is stale (now %s)", signed.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case signed.After(now.Add(WorkSigMaxSkew)):
		return refuse("work signed at %s is in the future (now %s)", signed.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// verifySession checks an item MACed with a session key ("<session> <unix
// ns> <mac>"), verifying and opening the session's announcement the first
// time it is seen.
func (v *WorkVerifier) verifySession(id string, data []byte, header, announce, stream string, seq uint64, until time.Time) error {
	sid, rest, ok1 := strings.Cut(header, " ")
	atPart, macPart, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return refuse("work signature is malformed")
	}
	at, err := strconv.ParseInt(atPart, 10, 64)
	if err != nil {
		return refuse("work signature time is malformed")
	}
	now := v.Now()
	if err := fresh(at, now); err != nil {
		return err
	}
	ses, err := v.sessionKey(sid, announce, now)
	if err != nil {
		return err
	}
	mac, err := base64.RawURLEncoding.DecodeString(macPart)
	if err != nil || len(mac) != sha256.Size {
		return refuse("work signature is malformed")
	}
	h := hmac.New(sha256.New, ses.key)
	h.Write(workDigest(v.Pool, id, at, data))
	if !hmac.Equal(h.Sum(nil), mac) {
		return refuse("work signature does not verify (another pool, request or body)")
	}
	return v.once(id, stream, seq, now, until)
}

// sessionKey returns session sid's key, verifying its announcement on
// first use; a session whose announcing key was unpinned is refused.
func (v *WorkVerifier) sessionKey(sid, announce string, now time.Time) (verifiedSession, error) {
	v.smu.Lock()
	ses, ok := v.sessions[sid]
	v.smu.Unlock()
	keys := v.keys.Load()
	if ok {
		if keys == nil || (*keys)[ses.pub] == nil {
			return ses, refuse("work session announced by a key that is no longer pinned")
		}
		if now.Sub(ses.issued) > WorkSessionLifetime+WorkSigMaxAge {
			return ses, refuse("work session expired")
		}
		return ses, nil
	}
	f := strings.Split(announce, " ")
	if announce == "" || len(f) != 5 || f[1] != sid {
		return ses, refuse("work session %.12s… is not announced with the item", sid)
	}
	var pub ed25519.PublicKey
	if keys != nil {
		pub = (*keys)[f[0]]
	}
	if pub == nil {
		return ses, refuse("work session announced by a key that is not pinned (%.12s…)", f[0])
	}
	issued, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return ses, refuse("work session announcement is malformed")
	}
	at := time.Unix(0, issued)
	if now.Sub(at) > WorkSessionLifetime+WorkSigMaxAge || at.After(now.Add(WorkSigMaxSkew)) {
		return ses, refuse("work session announced at %s is stale or in the future (now %s)", at.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	boxed, err1 := base64.RawURLEncoding.DecodeString(f[3])
	sig, err2 := base64.RawURLEncoding.DecodeString(f[4])
	if err1 != nil || err2 != nil || len(sig) != ed25519.SignatureSize {
		return ses, refuse("work session announcement is malformed")
	}
	if !ed25519.Verify(pub, sessionDigest(v.Pool, sid, issued, boxed), sig) {
		return ses, refuse("work session announcement does not verify (another pool, or forged)")
	}
	if v.Open == nil {
		return ses, refuse("work session keys are not accepted by this keyworker")
	}
	key, err := v.Open(sid, boxed)
	if err != nil || len(key) != 32 {
		return ses, refuse("work session key does not open with this pool's box key")
	}
	ses = verifiedSession{key: key, pub: f[0], issued: at}
	v.smu.Lock()
	defer v.smu.Unlock()
	if v.sessions == nil || len(v.sessions) >= maxWorkSessions {
		old := v.sessions
		v.sessions = map[string]verifiedSession{}
		for k, s := range old { // keep the live ones
			if now.Sub(s.issued) <= WorkSessionLifetime+WorkSigMaxAge && len(v.sessions) < maxWorkSessions/2 {
				v.sessions[k] = s
			}
		}
	}
	v.sessions[sid] = ses
	return ses, nil
}

// maxWorkSessions bounds the sessions a keyworker remembers (a few per
// authn process and WorkSessionLifetime are live).
const maxWorkSessions = 1024

// rotate starts a new generation of a replay tier once the current one is
// older than length.
func rotate(old, cur map[string]seenWork, gen, now time.Time, length time.Duration) (map[string]seenWork, map[string]seenWork, time.Time) {
	switch age := now.Sub(gen); {
	case cur == nil || age > 2*length:
		return nil, map[string]seenWork{}, now
	case age > length:
		return cur, map[string]seenWork{}, now
	}
	return old, cur, gen
}

// once records the delivery of id (due by until; zero: no deadline); a
// second stored copy is a replay.
func (v *WorkVerifier) once(id, stream string, seq uint64, now, until time.Time) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	// Two generations of each tier cover at least its window (older ids
	// are refused as stale, or cannot be done, before this); a generation
	// idle for two lengths is dropped whole.
	v.old, v.seen, v.gen = rotate(v.old, v.seen, v.gen, now, WorkSigMaxAge+WorkSigMaxSkew)
	v.shortOld, v.short, v.shortGen = rotate(v.shortOld, v.short, v.shortGen, now, replayShortGen)
	at := seenWork{stream: stream, seq: seq}
	for _, m := range [...]map[string]seenWork{v.short, v.shortOld, v.seen, v.old} {
		if prev, ok := m[id]; ok && prev != at {
			return refuse("work item %s replayed (already delivered as %s #%d)", id, prev.stream, prev.seq)
		}
	}
	if !until.IsZero() && until.Sub(now) <= replayShortGen-WorkSigMaxSkew {
		v.short[id] = at
	} else {
		v.seen[id] = at
	}
	return nil
}
