package hsm

import (
	"fmt"
	"testing"

	"github.com/miekg/pkcs11"
)

func TestTransient(t *testing.T) {
	for err, want := range map[error]bool{
		fmt.Errorf("%w: token %q not found", ErrTokenNotFound, "sovkeys"): true,
		fmt.Errorf("open: %w", pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)):    true,
		fmt.Errorf("open: %w", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)):     true,
		fmt.Errorf("login: %w", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)):   false,
		fmt.Errorf("login: %w", pkcs11.Error(pkcs11.CKR_PIN_LOCKED)):      false,
		fmt.Errorf("mechanisms missing: CKM_AES_GCM"):                     false,
		fmt.Errorf("open: %w", pkcs11.Error(pkcs11.CKR_ARGUMENTS_BAD)):    false,
	} {
		if got := Transient(err); got != want {
			t.Errorf("Transient(%v) = %v, want %v", err, got, want)
		}
	}
}
