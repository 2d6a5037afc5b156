package hsm

// Module loading shared by every HSM in the process.

import (
	"fmt"
	"path/filepath"
	"sync"

	"github.com/miekg/pkcs11"
)

// modules is the process-wide registry of loaded PKCS#11 modules, and the one
// piece of package-level mutable state in the keyworker. It has to be: C_Initialize
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
