package hsm

// Templates, attributes and session objects of the hierarchy.

import (
	"crypto/rand"
	"fmt"
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
// object, with exactly the listed usages; a session key is extractable as
// given, a token key only under a trusted key (CKA_WRAP_WITH_TRUSTED).
func aesTemplate(token, extractable bool, usages ...uint) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable || token),
	}
	if token {
		// Token keys leave the HSM only wrapped under a trusted backup key
		// (backup.go); session keys stay as asked.
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true))
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

// trustedOnlyExport refuses an object that could leave the HSM other than
// wrapped under a trusted key: extractable without CKA_WRAP_WITH_TRUSTED,
// or not sensitive. Keys made before backups existed (not extractable)
// pass: they are cloned with the vendor's tools instead.
func trustedOnlyExport(p P11, sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, label string) error {
	attrs, err := p.GetAttributeValue(sh, o, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, nil),
	})
	if err != nil {
		return fmt.Errorf("keyworker: read attributes of %q: %w", label, err)
	}
	if !attrBool(attrs, pkcs11.CKA_SENSITIVE) ||
		attrBool(attrs, pkcs11.CKA_EXTRACTABLE) && !attrBool(attrs, pkcs11.CKA_WRAP_WITH_TRUSTED) {
		return fmt.Errorf("keyworker: key %q is extractable other than under a trusted key, or not sensitive", label)
	}
	return nil
}
