package agent

import (
	"errors"
	"fmt"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/disk"
	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/secmem"
	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/store"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
)

// ExitCode is the process exit status of sk-agent. Codes 2-5 mean what
// they meant for the original agent's scripts.
type ExitCode int

// Exit codes (docs/agent.md lists them from ExitCodes).
const (
	ExitOK          ExitCode = 0
	ExitFailure     ExitCode = 1
	ExitUsage       ExitCode = 2
	ExitPlatform    ExitCode = 3
	ExitDevice      ExitCode = 4
	ExitNotRoot     ExitCode = 5
	ExitUnreachable ExitCode = 6
	ExitRefused     ExitCode = 7
	ExitSignature   ExitCode = 8
	ExitUnlock      ExitCode = 9
	ExitStore       ExitCode = 10
	ExitNotOwner    ExitCode = 11
)

// ExitCodes describes every code, in order (help text and docs).
var ExitCodes = []struct {
	Code    ExitCode
	Meaning string
}{
	{ExitOK, "success"},
	{ExitFailure, "unexpected failure (an external tool failed, I/O error)"},
	{ExitUsage, "bad arguments or configuration"},
	{ExitPlatform, "platform check failed: not a Nitro instance (AWS identity only; --ignore-nitro-check skips it)"},
	{ExitDevice, "device refused: not empty (needs --delete-all-existing-data), in use, or not a sovkeys volume"},
	{ExitNotRoot, "must run as root"},
	{ExitUnreachable, "the service did not answer after the bounded retries (network, 429, 5xx)"},
	{ExitRefused, "the service refused the call (4xx): other tenant, blob tampered or moved, tenant disabled"},
	{ExitSignature, "a signature did not verify against the pinned signing key, or check-key found another key"},
	{ExitUnlock, "the volume could not be unlocked or mounted (keyslot refused the secret, no dm-crypt, mount failed)"},
	{ExitStore, "the secret store is empty, corrupt, or bound to another volume"},
	{ExitNotOwner, "the secret store belongs to another instance: run takeown first"},
}

// Errors the agent itself decides.
var (
	ErrUsage       = errors.New("sk-agent: usage")
	ErrNotRoot     = errors.New("sk-agent: must run as root")
	ErrPlatform    = errors.New("sk-agent: platform check failed")
	ErrNotVolume   = errors.New("sk-agent: not a sovkeys volume")
	ErrNotOwner    = errors.New("sk-agent: secret store belongs to another instance")
	ErrUnreachable = errors.New("sk-agent: service unreachable")
	ErrUnlock      = errors.New("sk-agent: cannot unlock the volume")
	ErrNoDM        = errors.New("sk-agent: device-mapper (dm-crypt) is not available")
	ErrKeyMismatch = errors.New("sk-agent: the service's signing key differs from the pinned key")
	ErrVolumeBound = errors.New("sk-agent: secret store is bound to another volume")
)

// Code maps an error to its exit code.
func Code(err error) ExitCode {
	var api *vsclient.APIError
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrUsage), errors.Is(err, shared.ErrConfigValidation):
		return ExitUsage
	case errors.Is(err, ErrNotRoot):
		return ExitNotRoot
	case errors.Is(err, ErrPlatform):
		return ExitPlatform
	case errors.Is(err, disk.ErrNotEmpty), errors.Is(err, disk.ErrInUse), errors.Is(err, disk.ErrNotBlock),
		errors.Is(err, disk.ErrNoGPT), errors.Is(err, ErrNotVolume):
		return ExitDevice
	case errors.Is(err, vsclient.ErrBadSignature), errors.Is(err, ErrKeyMismatch):
		return ExitSignature
	case errors.Is(err, ErrUnreachable):
		return ExitUnreachable
	case errors.As(err, &api):
		return ExitRefused
	case errors.Is(err, ErrUnlock), errors.Is(err, ErrNoDM), errors.Is(err, secmem.ErrLock):
		return ExitUnlock
	case errors.Is(err, store.ErrEmpty), errors.Is(err, store.ErrCorrupt), errors.Is(err, store.ErrTooSmall),
		errors.Is(err, ErrVolumeBound):
		return ExitStore
	case errors.Is(err, ErrNotOwner):
		return ExitNotOwner
	}
	return ExitFailure
}

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}
