package hsm

// The PKCS#11 surface the package uses, and the classification of the
// module's return values.

import (
	"errors"

	"github.com/miekg/pkcs11"
)

// P11 is the part of a PKCS#11 module this package uses, and the only way
// it reaches the module (the smallstep kms/pkcs11 pattern). *pkcs11.Ctx
// implements it, checked at compile time below; tests may wrap it to
// inject faults.
type P11 interface {
	GetSlotList(tokenPresent bool) ([]uint, error)
	GetTokenInfo(slotID uint) (pkcs11.TokenInfo, error)
	GetMechanismInfo(slotID uint, m []*pkcs11.Mechanism) (pkcs11.MechanismInfo, error)
	GetMechanismList(slotID uint) ([]*pkcs11.Mechanism, error) // the start-up check (mechanisms.go)
	InitToken(slotID uint, soPIN string, label string) error
	InitPIN(sh pkcs11.SessionHandle, pin string) error
	OpenSession(slotID uint, flags uint) (pkcs11.SessionHandle, error)
	CloseSession(sh pkcs11.SessionHandle) error
	GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) // idle keep-alive (sessions.go)
	Login(sh pkcs11.SessionHandle, userType uint, pin string) error
	Logout(sh pkcs11.SessionHandle) error
	FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error
	FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error)
	FindObjectsFinal(sh pkcs11.SessionHandle) error
	GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error)
	// SetAttributeValue narrows the usage of old key versions (versions.go).
	SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error
	GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Encrypt(sh pkcs11.SessionHandle, message []byte) ([]byte, error)
	DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Decrypt(sh pkcs11.SessionHandle, cipher []byte) ([]byte, error)
	// The key hierarchy's: key pairs, KEK derivation, wrapping, session
	// objects and ECDSA signing.
	GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error)
	DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrapping, key pkcs11.ObjectHandle) ([]byte, error)
	UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrapping pkcs11.ObjectHandle, wrapped []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error
	SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Sign(sh pkcs11.SessionHandle, message []byte) ([]byte, error)
}

var _ P11 = (*pkcs11.Ctx)(nil)

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
		pkcs11.CKR_DEVICE_ERROR,
	)
}

// isStaleHandle: the cached object handle no longer names an object.
func isStaleHandle(err error) bool {
	return err != nil && isCKR(err, pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID)
}

// isAuthFailure: C_Decrypt results that mean the input does not
// authenticate. SoftHSMv2 2.6 reports a bad tag as CKR_GENERAL_ERROR (checked
// empirically); since IV and tag lengths are checked before the call, any of
// these after a successful C_DecryptInit means bad input, and no plaintext
// is released either way.
func isAuthFailure(err error) bool {
	return isCKR(err,
		pkcs11.CKR_ENCRYPTED_DATA_INVALID,
		pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_DATA_INVALID,
		pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_SIGNATURE_INVALID,
		pkcs11.CKR_GENERAL_ERROR,
		pkcs11.CKR_FUNCTION_FAILED,
	)
}
