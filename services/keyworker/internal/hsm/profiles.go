package hsm

// HSM profiles: what each HSM family needs from sovkeys (docs/hsm.md).

import (
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// Profile names the mechanisms and quirks of one HSM family.
type Profile struct {
	Name string
	// IVFromHSM: the HSM generates the AES-GCM IV and writes it into the
	// (zeroed, 12-byte) IV buffer of CK_GCM_PARAMS; a host IV is refused.
	IVFromHSM bool
	// ECBDerive: CKM_AES_ECB_ENCRYPT_DATA is available, so volume-secret
	// blobs are written in format v1. Without it they are written in v2
	// (SP 800-108 counter-mode KDF over CKM_SHA256_HMAC, then AES key wrap).
	ECBDerive bool
	// OAEPSHA256: C_WrapKey with CKM_RSA_PKCS_OAEP, SHA-256 and MGF1-SHA-256
	// (documentation; oaep.go always tries the HSM first and lets only
	// SoftHSM fall back to wrapping in keyworker memory).
	OAEPSHA256 bool
	// Lacks lists mechanisms sovkeys could use but this family does not
	// offer; the profile's test suite refuses them on SoftHSM.
	Lacks []uint
	// Verified: the profile was checked against the device itself;
	// otherwise it follows the vendor's documentation.
	Verified bool
}

// The profiles, by name.
var profiles = map[string]Profile{
	"softhsm":   {Name: "softhsm", ECBDerive: true, Verified: true},
	"cloudhsm":  {Name: "cloudhsm", IVFromHSM: true, OAEPSHA256: true, Lacks: []uint{pkcs11.CKM_AES_ECB_ENCRYPT_DATA, pkcs11.CKM_AES_CBC_ENCRYPT_DATA}},
	"luna":      {Name: "luna", IVFromHSM: true, OAEPSHA256: true, Lacks: []uint{pkcs11.CKM_AES_ECB_ENCRYPT_DATA}},
	"proteccio": {Name: "proteccio", OAEPSHA256: true, Lacks: []uint{pkcs11.CKM_AES_ECB_ENCRYPT_DATA}},
	"nshield":   {Name: "nshield", ECBDerive: true, OAEPSHA256: true},
}

// modelHints maps words of an --hsm-model to a profile.
var modelHints = []struct{ word, profile string }{
	{"softhsm", "softhsm"}, {"cloudhsm", "cloudhsm"}, {"luna", "luna"}, {"thales luna", "luna"},
	{"proteccio", "proteccio"}, {"nshield", "nshield"}, {"entrust", "nshield"},
}

// LookupProfile returns the profile named name, or the one an HSM model
// string names ("SoftHSMv2", "AWS CloudHSM", "Thales Luna 7"...). An empty
// name is SoftHSM; an unknown one is an error rather than a guess.
func LookupProfile(name string) (Profile, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" {
		return profiles["softhsm"], nil
	}
	if p, ok := profiles[n]; ok {
		return p, nil
	}
	for _, h := range modelHints {
		if strings.Contains(n, h.word) {
			return profiles[h.profile], nil
		}
	}
	return Profile{}, fmt.Errorf("keyworker: no hsm profile for %q (known: softhsm, cloudhsm, luna, proteccio, nshield): %w", name, shared.ErrConfigValidation)
}

// blobVersionToWrite is the volume-secret blob format this HSM writes.
func (h *HSM) blobVersionToWrite() byte {
	if h.profile.ECBDerive {
		return blobV1
	}
	return blobV2
}
