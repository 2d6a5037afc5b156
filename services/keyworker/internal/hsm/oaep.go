package hsm

// The RSA-OAEP wrap of a secret for the caller.

import (
	"cmp"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
)

// How wrapForCaller does RSA-OAEP, settled by the first wrap.
const (
	oaepUnknown = iota
	oaepInHSM   // C_WrapKey, CKM_RSA_PKCS_OAEP with SHA-256 / MGF1-SHA-256
	oaepInHost  // SoftHSM only: the secret is exported here and wrapped by crypto/rsa
)

// wrapForCaller wraps the secret under rsaPub with RSA-OAEP SHA-256. It
// uses C_WrapKey; on the first refusal of those OAEP parameters by
// SoftHSM (2.6 does OAEP with SHA-1 only) it switches, for good, to
// exporting the secret to this process and wrapping it with crypto/rsa.
// SoftHSM runs in this process, so its keys are in this memory anyway; any
// other HSM refusing fails the call rather than let the secret out.
func (h *HSM) wrapForCaller(p P11, sh pkcs11.SessionHandle, secret pkcs11.ObjectHandle, pub *rsa.PublicKey) ([]byte, error) {
	hash := cmp.Or(h.hier.oaepHash, crypto.SHA256)
	if h.hier.oaep.Load() != oaepInHost {
		out, err := wrapOAEPInHSM(p, sh, secret, pub, hash)
		if err == nil {
			h.hier.oaep.CompareAndSwap(oaepUnknown, oaepInHSM)
			return out, nil
		}
		refused := isCKR(err, pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_MECHANISM_INVALID)
		if !refused || h.hier.oaep.Load() == oaepInHSM || !h.isSoftHSM() {
			return nil, fmt.Errorf("keyworker: rsa-oaep wrap of the secret: %w", err)
		}
		if h.hier.oaep.CompareAndSwap(oaepUnknown, oaepInHost) {
			h.logger.Warn("softhsm cannot wrap with RSA-OAEP SHA-256; secrets pass through keyworker memory to be wrapped", "token", h.cfg.TokenLabel)
		}
	}
	return wrapOAEPInHost(p, sh, secret, pub, hash)
}

func wrapOAEPInHSM(p P11, sh pkcs11.SessionHandle, secret pkcs11.ObjectHandle, pub *rsa.PublicKey, hash crypto.Hash) ([]byte, error) {
	hashMech, mgf := uint(pkcs11.CKM_SHA256), uint(pkcs11.CKG_MGF1_SHA256)
	if hash == crypto.SHA1 {
		hashMech, mgf = pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1
	}
	rsaKey, err := p.CreateObject(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, pub.N.Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(pub.E)).Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
	})
	if err != nil {
		return nil, fmt.Errorf("keyworker: import rsa wrapping key: %w", err)
	}
	defer destroy(p, sh, rsaKey)
	params := pkcs11.NewOAEPParams(hashMech, mgf, pkcs11.CKZ_DATA_SPECIFIED, nil)
	return p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, rsaKey, secret)
}

// wrapOAEPInHost exports the secret under a one-time transport key (so no
// hierarchy object is ever CKA_SENSITIVE false; CKM_AES_CBC is enough for
// this in-process hand-over), decrypts it here and RSA-OAEP encrypts it;
// the clear secret lives in this process for microseconds and is zeroed.
func wrapOAEPInHost(p P11, sh pkcs11.SessionHandle, secret pkcs11.ObjectHandle, pub *rsa.PublicKey, hash crypto.Hash) ([]byte, error) {
	tk := make([]byte, hierKeySize)
	_, _ = rand.Read(tk)
	defer clear(tk)
	tkObj, err := p.CreateObject(sh, append(aesTemplate(false, false, pkcs11.CKA_WRAP), pkcs11.NewAttribute(pkcs11.CKA_VALUE, tk)))
	if err != nil {
		return nil, fmt.Errorf("keyworker: create transport key: %w", err)
	}
	defer destroy(p, sh, tkObj)
	iv := make([]byte, aes.BlockSize) // one-time key: a fixed IV is fine
	pt, err := p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, iv)}, tkObj, secret)
	defer clear(pt)
	if err == nil && len(pt) != hierKeySize {
		err = fmt.Errorf("hsm returned %d bytes", len(pt))
	}
	if err != nil {
		return nil, fmt.Errorf("keyworker: export secret: %w", err)
	}
	block, _ := aes.NewCipher(tk) // 32 bytes: cannot fail
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, pt)
	out, err := rsa.EncryptOAEP(hash.New(), rand.Reader, pub, pt, nil)
	if err != nil {
		return nil, fmt.Errorf("keyworker: rsa-oaep wrap of the secret: %w", err)
	}
	return out, nil
}
