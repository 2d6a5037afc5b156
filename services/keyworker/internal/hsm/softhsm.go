package hsm

// SoftHSMv2 token provisioning for `sovkeys standalone` and tests.
//
// What SoftHSMv2 2.6 does (checked empirically, and see softhsm/SoftHSMv2#198,
// #334):
//   - It reads SOFTHSM2_CONF, and scans the token directory, only in
//     C_Initialize. A token that another process (softhsm2-util) creates
//     afterwards stays invisible to this process until the library is
//     finalized and initialised again.
//   - C_GetSlotList with a NULL list (miekg/pkcs11 always makes that call
//     first) adds a fresh uninitialised slot whenever none is left, so
//     C_InitToken can create any number of tokens in one process.
//   - A token initialised in-process keeps its slot id until the library is
//     re-initialised; then it moves to an id derived from its serial. Tokens
//     are therefore always found by label.
// So tokens are created in-process with C_InitToken + C_InitPIN, through the
// shared module and under module.tokenMu; softhsm2-util would only work before
// the first C_Initialize.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// SoftHSMToken is a SoftHSMv2 token ready for Config.
type SoftHSMToken struct {
	ModulePath string // the libsofthsm2.so found
	ConfPath   string // the SOFTHSM2_CONF in effect for this process
	TokenLabel string
}

// softHSMModules are where distributions install libsofthsm2.so.
var softHSMModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

// FindSoftHSMModule returns the path of the installed SoftHSMv2 PKCS#11
// module, or an error wrapping fs.ErrNotExist.
func FindSoftHSMModule() (string, error) {
	for _, p := range softHSMModules {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("keyworker: libsofthsm2.so not found (install softhsm2): %w", fs.ErrNotExist)
}

// EnsureSoftHSMToken writes dir/softhsm2.conf (token directory dir/tokens,
// file backend, log level ERROR), sets SOFTHSM2_CONF for this process if it
// is not yet set (SoftHSM reads it at C_Initialize, once per process), and
// creates a token labelled label with the given PINs unless one exists, in
// which case it is reused as it is (PINs unchecked: Open checks the user
// PIN). When SOFTHSM2_CONF was already set, that configuration is the one in
// effect and the returned ConfPath names it.
func EnsureSoftHSMToken(ctx context.Context, dir, label, soPIN, userPIN string) (SoftHSMToken, error) {
	if err := validateSoftHSMArgs(dir, label, soPIN, userPIN); err != nil {
		return SoftHSMToken{}, err
	}
	modulePath, err := FindSoftHSMModule()
	if err != nil {
		return SoftHSMToken{}, err
	}
	confPath, err := writeSoftHSMConf(dir)
	if err != nil {
		return SoftHSMToken{}, err
	}
	if cur, ok := os.LookupEnv("SOFTHSM2_CONF"); ok && cur != "" {
		confPath = cur
	} else if err := os.Setenv("SOFTHSM2_CONF", confPath); err != nil {
		return SoftHSMToken{}, fmt.Errorf("keyworker: set SOFTHSM2_CONF: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return SoftHSMToken{}, fmt.Errorf("keyworker: ensure softhsm token: %w", err)
	}
	mod, err := modules.acquire(modulePath)
	if err != nil {
		return SoftHSMToken{}, err
	}
	err = ensureToken(ctx, mod, label, soPIN, userPIN)
	if rerr := modules.release(mod); err == nil {
		err = rerr
	}
	if err != nil {
		return SoftHSMToken{}, err
	}
	return SoftHSMToken{ModulePath: modulePath, ConfPath: confPath, TokenLabel: label}, nil
}

func validateSoftHSMArgs(dir, label, soPIN, userPIN string) error {
	var problem string
	switch {
	case dir == "":
		problem = "directory is required"
	case label == "" || len(label) > maxTokenLabel:
		problem = fmt.Sprintf("token label must be 1 to %d bytes", maxTokenLabel)
	case len(soPIN) < 4 || len(soPIN) > 255 || len(userPIN) < 4 || len(userPIN) > 255:
		problem = "pins must be 4 to 255 bytes" // SoftHSMv2's limits
	default:
		return nil
	}
	return fmt.Errorf("keyworker: softhsm token: %s: %w", problem, shared.ErrConfigValidation)
}

func writeSoftHSMConf(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("keyworker: softhsm dir: %w", err)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", fmt.Errorf("keyworker: softhsm token dir: %w", err)
	}
	conf := "# written by sovkeys\n" +
		"directories.tokendir = " + tokens + "\n" +
		"objectstore.backend = file\n" +
		"log.level = ERROR\n" +
		"slots.removable = false\n"
	path := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return "", fmt.Errorf("keyworker: write softhsm conf: %w", err)
	}
	return path, nil
}

// ensureToken creates the token labelled label in mod unless it exists.
func ensureToken(ctx context.Context, mod *module, label, soPIN, userPIN string) error {
	mod.tokenMu.Lock()
	defer mod.tokenMu.Unlock()
	mod.objMu.Lock() // creates token files; see module.objMu
	defer mod.objMu.Unlock()
	p := P11(mod.ctx)
	if _, found, err := findTokenSlot(p, label); err != nil || found {
		return err
	}
	// Another token creator in this process that does not share tokenMu
	// (shared/testkit/hsmtest) can claim the free slot between our look and our
	// C_InitToken; re-initialising its token then fails on the SO PIN (it
	// uses random ones) and we try the next free slot.
	var lastErr error
	for range 3 {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("keyworker: create token %q: %w", label, err)
		}
		slot, err := freeSlot(p)
		if err != nil {
			return err
		}
		if err := p.InitToken(slot, soPIN, label); err != nil {
			if isCKR(err, pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_SESSION_EXISTS) {
				lastErr = err
				continue
			}
			return fmt.Errorf("keyworker: create token %q: %w", label, err)
		}
		if info, err := p.GetTokenInfo(slot); err != nil || info.Label != label {
			lastErr = fmt.Errorf("slot %d taken by another token", slot)
			continue
		}
		return initUserPIN(p, slot, label, soPIN, userPIN)
	}
	return fmt.Errorf("keyworker: create token %q: %w", label, lastErr)
}

// freeSlot returns a slot with an uninitialised token.
func freeSlot(p P11) (uint, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("keyworker: list slots: %w", err)
	}
	for _, s := range slots {
		info, err := p.GetTokenInfo(s)
		if err != nil {
			return 0, fmt.Errorf("keyworker: token info of slot %d: %w", s, err)
		}
		if info.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			return s, nil
		}
	}
	return 0, errors.New("keyworker: no free slot for a new token")
}

// initUserPIN sets the user PIN of a freshly initialised token as SO. Nobody
// else has a session on the new token, so the SO logout touches no one.
func initUserPIN(p P11, slot uint, label, soPIN, userPIN string) error {
	sh, err := p.OpenSession(slot, sessionFlags)
	if err != nil {
		return fmt.Errorf("keyworker: create token %q: open session: %w", label, err)
	}
	defer p.CloseSession(sh) //nolint:errcheck // nothing to do about it
	if err := p.Login(sh, pkcs11.CKU_SO, soPIN); err != nil {
		return fmt.Errorf("keyworker: create token %q: so login: %w", label, err)
	}
	defer p.Logout(sh) //nolint:errcheck // closing the session ends the login too
	if err := p.InitPIN(sh, userPIN); err != nil {
		return fmt.Errorf("keyworker: create token %q: init user pin: %w", label, err)
	}
	return nil
}

// isSoftHSM reports whether the token is a SoftHSMv2 one.
func (h *HSM) isSoftHSM() bool {
	info, err := h.p11.GetTokenInfo(uint(h.slot.Load()))
	return err == nil && strings.TrimSpace(info.ManufacturerID) == "SoftHSM project"
}
