package hsm

// Templates, attributes and session objects of the hierarchy.

import (
	"crypto/rand"
	"slices"

	"github.com/miekg/pkcs11"
)

const hierKeySize = 32 // CMKs, KEKs and secrets are AES-256 keys

func attrBool(attrs []*pkcs11.Attribute, typ uint) bool {
	v := attrString(attrs, typ)
	return len(v) > 0 && v[0] != 0
}

func attrString(attrs []*pkcs11.Attribute, typ uint) string {
	for _, a := range attrs {
		if a.Type == typ {
			return string(a.Value)
		}
	}
	return ""
}

// bytesOrNil returns b, or nil and err.
func bytesOrNil(b []byte, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	return b, nil
}

func randomID() []byte {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	return id
}

// destroy removes a temporary session object; a failure leaves it to die
// with its session.
func destroy(p P11, sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) {
	_ = p.DestroyObject(sh, o)
}

// aesTemplate: an AES key, private and sensitive, a token or session
// object, extractable as given, with exactly the listed usages.
func aesTemplate(token, extractable bool, usages ...uint) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
	}
	for _, a := range []uint{pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP,
		pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY, pkcs11.CKA_DERIVE} {
		t = append(t, pkcs11.NewAttribute(a, slices.Contains(usages, a)))
	}
	return t
}

// genericTemplate is aesTemplate for a CKK_GENERIC_SECRET key (the HMAC
// parents of blob format v2).
func genericTemplate(token, extractable bool, usages ...uint) []*pkcs11.Attribute {
	t := aesTemplate(token, extractable, usages...)
	t[1] = pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET)
	return t
}

// generateGeneric generates a 256-bit generic-secret session key that can
// only HMAC-sign (a v2 CMK), to be wrapped.
func generateGeneric(p P11, sh pkcs11.SessionHandle, extractable bool) (pkcs11.ObjectHandle, error) {
	return p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)},
		append(genericTemplate(false, extractable, pkcs11.CKA_SIGN), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, hierKeySize)))
}

// generateAES generates an AES-256 session key with no usage, to be wrapped.
func generateAES(p P11, sh pkcs11.SessionHandle, extractable bool) (pkcs11.ObjectHandle, error) {
	return p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		append(aesTemplate(false, extractable), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, hierKeySize)))
}
