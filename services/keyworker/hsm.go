package keyworker

// The PKCS#11 layer: module loading shared by every HSM in the process, the
// narrow P11 interface over *pkcs11.Ctx, and the session pool. Crypto
// operations live in hsm_ops.go, SoftHSM provisioning in softhsm.go.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// P11 is the part of a PKCS#11 module the keyworker uses. *pkcs11.Ctx
// implements it; tests may wrap it to inject faults.
type P11 interface {
	GetSlotList(tokenPresent bool) ([]uint, error)
	GetTokenInfo(slotID uint) (pkcs11.TokenInfo, error)
	GetMechanismInfo(slotID uint, m []*pkcs11.Mechanism) (pkcs11.MechanismInfo, error)
	InitToken(slotID uint, soPIN string, label string) error
	InitPIN(sh pkcs11.SessionHandle, pin string) error
	OpenSession(slotID uint, flags uint) (pkcs11.SessionHandle, error)
	CloseSession(sh pkcs11.SessionHandle) error
	Login(sh pkcs11.SessionHandle, userType uint, pin string) error
	Logout(sh pkcs11.SessionHandle) error
	FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error
	FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error)
	FindObjectsFinal(sh pkcs11.SessionHandle) error
	GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error)
	GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Encrypt(sh pkcs11.SessionHandle, message []byte) ([]byte, error)
	DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Decrypt(sh pkcs11.SessionHandle, cipher []byte) ([]byte, error)
}

var _ P11 = (*pkcs11.Ctx)(nil)

const (
	defaultSessions = 4
	maxSessions     = 1024
	maxTokenLabel   = 32 // CK_TOKEN_INFO.label is 32 bytes, space padded
	sessionFlags    = pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION
)

// ErrHSMClosed is returned by operations on an HSM after Close.
var ErrHSMClosed = errors.New("keyworker: hsm closed")

// HSMConfig selects a token in a PKCS#11 module and sizes the session pool.
type HSMConfig struct {
	ModulePath string // e.g. /usr/lib/softhsm/libsofthsm2.so
	TokenLabel string // token found by label, never by slot number
	PIN        string // user PIN; never logged
	Sessions   int    // size of the session pool (= this keyworker's in-flight budget); default 4
	IVFromHSM  bool   // true: HSM generates the GCM IV (Luna/CloudHSM style); false: host generates 12 random bytes (SoftHSM)
}

// Validate reports the first problem with c, wrapping shared.ErrConfigValidation.
// A zero Sessions is valid and means the default.
func (c HSMConfig) Validate() error {
	var problem string
	switch {
	case c.ModulePath == "":
		problem = "module path is required"
	case c.TokenLabel == "":
		problem = "token label is required"
	case len(c.TokenLabel) > maxTokenLabel:
		problem = fmt.Sprintf("token label longer than %d bytes", maxTokenLabel)
	case c.PIN == "":
		problem = "pin is required"
	case c.Sessions < 0 || c.Sessions > maxSessions:
		problem = fmt.Sprintf("sessions must be between 1 and %d", maxSessions)
	default:
		return nil
	}
	return fmt.Errorf("keyworker: hsm config: %s: %w", problem, shared.ErrConfigValidation)
}

// String omits the PIN so a config printed with %v or %+v never leaks it.
func (c HSMConfig) String() string {
	return fmt.Sprintf("{ModulePath:%s TokenLabel:%s PIN:[redacted] Sessions:%d IVFromHSM:%t}",
		c.ModulePath, c.TokenLabel, c.Sessions, c.IVFromHSM)
}

// LogValue omits the PIN so a config passed to slog never leaks it.
func (c HSMConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("module", c.ModulePath),
		slog.String("token", c.TokenLabel),
		slog.Int("sessions", c.Sessions),
		slog.Bool("iv_from_hsm", c.IVFromHSM),
	)
}

func (c HSMConfig) withDefaults() HSMConfig {
	if c.Sessions == 0 {
		c.Sessions = defaultSessions
	}
	return c
}

// modules is the process-wide registry of loaded PKCS#11 modules, and the one
// piece of package-level mutable state in keyworker. It has to be: C_Initialize
// and C_Finalize act on the whole process, so every HSM (and
// EnsureSoftHSMToken) using the same library shares one initialisation,
// reference counted.
var modules = moduleRegistry{byPath: map[string]*module{}}

type moduleRegistry struct {
	mu     sync.Mutex
	byPath map[string]*module
}

type module struct {
	path string // symlinks resolved: two spellings of one library share an entry
	ctx  *pkcs11.Ctx
	refs int
	// owned: our C_Initialize returned CKR_OK, so the last release calls
	// C_Finalize. When something else in the process initialised the library
	// first (CKR_CRYPTOKI_ALREADY_INITIALIZED), finalizing it is not ours to do.
	owned bool
	// tokenMu serialises token creation in this process, so two callers never
	// both claim the same free slot.
	tokenMu sync.Mutex
	// objMu: creating a token object excludes every other call through this
	// module. SoftHSMv2 2.6 stores new objects racily against concurrent
	// access from other threads and then fails C_GenerateKey with
	// CKR_GENERAL_ERROR (reproduced here; softhsm/SoftHSMv2#573). Object
	// creation is rare, so a short pause of all traffic is cheap; crypto
	// calls take the read side.
	objMu sync.RWMutex
}

// acquire loads and initialises the module at path, or takes another
// reference on it when it is already loaded.
func (r *moduleRegistry) acquire(path string) (*module, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("keyworker: pkcs11 module %q: %w", path, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if m, ok := r.byPath[real]; ok {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(real)
	if ctx == nil {
		return nil, fmt.Errorf("keyworker: pkcs11 module %q: cannot load library", path)
	}
	owned := true
	if err := ctx.Initialize(); err != nil {
		if !isCKR(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			ctx.Destroy()
			return nil, fmt.Errorf("keyworker: pkcs11 module %q: initialize: %w", path, err)
		}
		owned = false
	}
	m := &module{path: real, ctx: ctx, refs: 1, owned: owned}
	r.byPath[real] = m
	return m, nil
}

// release drops a reference; the last one finalizes (if ours) and unloads.
func (r *moduleRegistry) release(m *module) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	m.refs--
	if m.refs > 0 {
		return nil
	}
	delete(r.byPath, m.path)
	var err error
	if m.owned {
		if ferr := m.ctx.Finalize(); ferr != nil && !isCKR(ferr, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED) {
			err = fmt.Errorf("keyworker: pkcs11 module %q: finalize: %w", m.path, ferr)
		}
	}
	m.ctx.Destroy()
	return err
}

// HSM is one logged-in token with a pool of sessions. It is safe for
// concurrent use; at most Sessions() operations reach the HSM at once.
type HSM struct {
	cfg    HSMConfig // holds the PIN for re-login of replaced sessions
	logger *slog.Logger
	mod    *module
	p11    P11
	slot   uint

	pool chan pkcs11.SessionHandle // exactly cfg.Sessions handles circulate
	done chan struct{}             // closed by Close

	keys keyCache
	hier hierarchyState // key hierarchy handles and CMK cache (hierarchy.go)

	closeOnce sync.Once
	closeErr  error
}

// OpenHSM loads the module (or shares it with other HSMs in the process),
// finds the token by label, opens cfg.Sessions sessions and logs in.
func OpenHSM(ctx context.Context, cfg HSMConfig, logger *slog.Logger) (*HSM, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
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
	h := &HSM{
		cfg:    cfg,
		logger: logger,
		mod:    mod,
		p11:    mod.ctx,
		pool:   make(chan pkcs11.SessionHandle, cfg.Sessions),
		done:   make(chan struct{}),
		keys:   keyCache{max: maxCachedKeys},
	}
	if err := h.open(ctx); err != nil {
		for len(h.pool) > 0 {
			_ = h.p11.CloseSession(<-h.pool)
		}
		return nil, errors.Join(err, modules.release(mod))
	}
	logger.InfoContext(ctx, "hsm opened", "hsm", cfg, "slot", h.slot)
	return h, nil
}

func (h *HSM) open(ctx context.Context) error {
	slot, found, err := findTokenSlot(h.p11, h.cfg.TokenLabel)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("keyworker: token %q not found in module %q", h.cfg.TokenLabel, h.cfg.ModulePath)
	}
	h.slot = slot
	gcm := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, nil)}
	if _, err := h.p11.GetMechanismInfo(slot, gcm); err != nil {
		return fmt.Errorf("keyworker: token %q does not support CKM_AES_GCM: %w", h.cfg.TokenLabel, err)
	}
	for range h.cfg.Sessions {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("keyworker: open hsm: %w", err)
		}
		sh, err := h.openSession()
		if err != nil {
			return err
		}
		h.pool <- sh
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
	sh, err := h.p11.OpenSession(h.slot, sessionFlags)
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
func (h *HSM) Sessions() int { return h.cfg.Sessions }

// Close waits for in-flight operations, closes the sessions and releases the
// module (finalizing it when this was the last user). It is idempotent.
// Sessions are closed one by one: C_Logout or C_CloseAllSessions would also
// end the sessions of other HSMs in this process on the same token.
func (h *HSM) Close() error {
	h.closeOnce.Do(func() {
		close(h.done)
		var errs []error
		for range h.cfg.Sessions {
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
	h.logger.WarnContext(ctx, "hsm session lost, replacing it", "token", h.cfg.TokenLabel, "err", err)
	nsh, oerr := h.openSession()
	if oerr != nil {
		// Keep the old handle in the pool; the next user retries the
		// replacement. It is not closed yet: a closed handle number could be
		// reused by another session of this process.
		return fmt.Errorf("keyworker: hsm session lost: %w", errors.Join(err, oerr))
	}
	_ = h.p11.CloseSession(sh) // frees a stuck operation; fails harmlessly on a dead handle
	sh = nsh
	h.keys.clear() // handles may not have survived whatever broke the session
	return fn(sh)
}

func sessionWaitError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("keyworker: waiting for hsm session: %w: %w", shared.ErrDependencyTimeout, err)
	}
	return fmt.Errorf("keyworker: waiting for hsm session: %w", err)
}

// isCKR reports whether err is the PKCS#11 return value code.
func isCKR(err error, codes ...uint) bool {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	for _, c := range codes {
		if uint(e) == c {
			return true
		}
	}
	return false
}

// isSessionLost: errors after which the session is unusable and must be replaced.
func isSessionLost(err error) bool {
	return err != nil && isCKR(err,
		pkcs11.CKR_SESSION_HANDLE_INVALID,
		pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_OPERATION_ACTIVE,
		pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_DEVICE_REMOVED,
	)
}

// isStaleHandle: the cached object handle no longer names an object.
func isStaleHandle(err error) bool {
	return err != nil && isCKR(err, pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID)
}

const maxCachedKeys = 4096

type cachedKey struct {
	handle pkcs11.ObjectHandle
	info   KeyInfo
}

// keyCache maps key labels to handles and attributes. It is bounded: when
// full, an arbitrary entry is dropped (a miss costs one C_FindObjects).
type keyCache struct {
	mu  sync.RWMutex
	max int
	m   map[string]cachedKey
}

func (c *keyCache) get(label string) (cachedKey, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	k, ok := c.m[label]
	return k, ok
}

func (c *keyCache) put(label string, k cachedKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]cachedKey)
	}
	if _, ok := c.m[label]; !ok && len(c.m) >= c.max {
		for victim := range c.m {
			delete(c.m, victim)
			break
		}
	}
	c.m[label] = k
}

func (c *keyCache) drop(label string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, label)
}

func (c *keyCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
}
