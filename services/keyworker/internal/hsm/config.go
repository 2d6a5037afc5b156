package hsm

// Config: which token in which module, and the size of the session pool.

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

const (
	defaultSessions = 4
	maxSessions     = 1024
	maxTokenLabel   = 32 // CK_TOKEN_INFO.label is 32 bytes, space padded
	sessionFlags    = pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION
)

// Config selects a token in a PKCS#11 module and sizes the session pool.
type Config struct {
	ModulePath string // e.g. /usr/lib/softhsm/libsofthsm2.so
	TokenLabel string // token found by label, never by slot number
	PIN        string // user PIN; never logged
	Sessions   int    // size of the session pool (= this keyworker's in-flight budget); default 4
	IVFromHSM  bool   // true: HSM generates the GCM IV (Luna/CloudHSM style); false: host generates 12 random bytes (SoftHSM)
	// Now is the clock (key-version cache, version creation dates); default time.Now.
	Now func() time.Time
	// Profile names the HSM family (profiles.go): a profile name or an HSM
	// model string; empty is SoftHSM. A profile that needs IVFromHSM sets it.
	Profile string
	// WrapP11, when set, wraps the module (tests inject faults with FaultP11).
	WrapP11 func(P11) P11
}

// Validate reports the first problem with c, wrapping shared.ErrConfigValidation.
// A zero Sessions is valid and means the default.
func (c Config) Validate() error {
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
func (c Config) String() string {
	return fmt.Sprintf("{ModulePath:%s TokenLabel:%s PIN:[redacted] Sessions:%d IVFromHSM:%t Profile:%s}",
		c.ModulePath, c.TokenLabel, c.Sessions, c.IVFromHSM, c.Profile)
}

// LogValue omits the PIN so a config passed to slog never leaks it.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("module", c.ModulePath),
		slog.String("token", c.TokenLabel),
		slog.Int("sessions", c.Sessions),
		slog.Bool("iv_from_hsm", c.IVFromHSM),
		slog.String("profile", c.Profile),
	)
}

func (c Config) withDefaults() Config {
	if c.Sessions == 0 {
		c.Sessions = defaultSessions
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
