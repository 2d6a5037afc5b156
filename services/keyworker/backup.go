package keyworker

// Disaster recovery and mechanism checks for the binary's `sovkeys hsm`,
// `backup` and `restore` commands; the PKCS#11 work is internal/hsm's
// (mechanisms.go, backup.go).

import (
	"context"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
)

type (
	// TokenLogin names a token and the PINs of an export or import.
	TokenLogin = hsm.TokenLogin
	// KeyExport is a token's keys wrapped under a backup key.
	KeyExport = hsm.KeyExport
	// ExportedKey is one key of a KeyExport.
	ExportedKey = hsm.ExportedKey
	// MechanismReport is a token's checked mechanism table.
	MechanismReport = hsm.MechanismReport
)

// BackupKeySize is the size of a backup key (AES-256).
const BackupKeySize = hsm.BackupKeySize

// SigningKeyLabel is the pool's ECDSA P-384 signing key (response
// signatures, audit checkpoints, backup manifests).
const SigningKeyLabel = hsm.SigningKeyLabel

var (
	// ErrImportConflict: the target token holds a label being imported.
	ErrImportConflict = hsm.ErrImportConflict
	// ErrMechanismsMissing: the token lacks mechanisms sovkeys needs.
	ErrMechanismsMissing = hsm.ErrMechanismsMissing
)

// InspectToken checks the mechanisms of a token (by label, else slot)
// without logging in.
func InspectToken(modulePath, label string, slot uint, profile string) (MechanismReport, error) {
	return hsm.InspectToken(modulePath, label, slot, profile)
}

// ExportKeys wraps every key of the token under backupKey (hsm.ExportKeys).
func ExportKeys(ctx context.Context, t TokenLogin, backupKey []byte) (KeyExport, error) {
	return hsm.ExportKeys(ctx, t, backupKey)
}

// ImportKeys unwraps exp into an empty token (hsm.ImportKeys).
func ImportKeys(ctx context.Context, t TokenLogin, backupKey []byte, exp KeyExport) (int, error) {
	return hsm.ImportKeys(ctx, t, backupKey, exp)
}
