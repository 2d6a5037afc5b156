package keyworker

// The keyworker's HSM. The PKCS#11 layer lives in internal/hsm; these names
// let the binary and keyworkertest open one without importing it.

import (
	"context"
	"log/slog"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
)

// HSM is one logged-in token with a pool of sessions (hsm.HSM).
type HSM = hsm.HSM

// HSMConfig selects a token in a PKCS#11 module and sizes the session pool.
type HSMConfig = hsm.Config

// SoftHSMToken is a SoftHSMv2 token ready for HSMConfig.
type SoftHSMToken = hsm.SoftHSMToken

// TransientHSMError reports whether opening the HSM may succeed when tried
// again (hsm.Transient): never for a login refusal.
func TransientHSMError(err error) bool { return hsm.Transient(err) }

// OpenHSM loads the module, finds the token by label, opens cfg.Sessions
// sessions and logs in (hsm.Open).
func OpenHSM(ctx context.Context, cfg HSMConfig, logger *slog.Logger) (*HSM, error) {
	return hsm.Open(ctx, cfg, logger)
}

// FindSoftHSMModule returns the path of the installed SoftHSMv2 PKCS#11
// module, or an error wrapping fs.ErrNotExist.
func FindSoftHSMModule() (string, error) { return hsm.FindSoftHSMModule() }

// EnsureSoftHSMToken prepares a SoftHSMv2 token directory and token for
// `sovkeys standalone` (hsm.EnsureSoftHSMToken).
func EnsureSoftHSMToken(ctx context.Context, dir, label, soPIN, userPIN string) (SoftHSMToken, error) {
	return hsm.EnsureSoftHSMToken(ctx, dir, label, soPIN, userPIN)
}

// ProfileForModel names the HSM profile an --hsm-model string implies, or
// "" (SoftHSM) when it names none. An explicit --hsm-profile wins.
func ProfileForModel(model string) string {
	p, err := hsm.LookupProfile(model)
	if err != nil {
		return ""
	}
	return p.Name
}
