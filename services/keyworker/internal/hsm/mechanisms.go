package hsm

// The PKCS#11 mechanisms sovkeys needs, read from the token at start
// (C_GetMechanismList, C_GetMechanismInfo) instead of assumed: a token
// lacking one is refused with the whole list, not found out in the middle
// of a request (docs/hsm.md, "Mechanisms").

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// CKM_AES_KEY_WRAP_KWP is PKCS#11 3.0's name for RFC 5649 AES key wrap
// with padding (miekg/pkcs11 1.1 predates it); SoftHSM 2.6 offers the
// same algorithm as CKM_AES_KEY_WRAP_PAD.
const CKM_AES_KEY_WRAP_KWP = 0x0000210B //nolint:revive // the PKCS#11 name

// ErrMechanismsMissing is wrapped when a token lacks mechanisms sovkeys needs.
var ErrMechanismsMissing = errors.New("keyworker: hsm lacks required mechanisms")

// MechanismNeed is one row of the table: a mechanism (or one of its
// alternatives), the flags it must have, and what uses it.
type MechanismNeed struct {
	Mechs   []uint // the first found is used; later ones are fallbacks
	Flags   uint   // CKF_ENCRYPT, CKF_SIGN... every one is required
	UsedBy  string
	Profile func(Profile) bool // nil: always needed; else needed when true
}

// mechanismNeeds is the table (docs/hsm.md repeats it).
var mechanismNeeds = []MechanismNeed{
	{Mechs: []uint{pkcs11.CKM_AES_KEY_GEN}, Flags: pkcs11.CKF_GENERATE, UsedBy: "XKS keys and versions, seal key, domain key"},
	{Mechs: []uint{pkcs11.CKM_AES_GCM}, Flags: pkcs11.CKF_ENCRYPT | pkcs11.CKF_DECRYPT, UsedBy: "XKS encrypt/decrypt, sealing of service secrets"},
	{Mechs: []uint{pkcs11.CKM_EC_KEY_PAIR_GEN}, Flags: pkcs11.CKF_GENERATE_KEY_PAIR, UsedBy: "signing and CA key pairs (P-384)"},
	{Mechs: []uint{pkcs11.CKM_ECDSA}, Flags: pkcs11.CKF_SIGN, UsedBy: "response signatures, audit checkpoints, backup manifests, instance CA"},
	{Mechs: []uint{pkcs11.CKM_AES_KEY_WRAP}, Flags: pkcs11.CKF_WRAP | pkcs11.CKF_UNWRAP, UsedBy: "EKTs and volume secrets (blob formats v1 and v2)"},
	{Mechs: []uint{pkcs11.CKM_GENERIC_SECRET_KEY_GEN}, Flags: pkcs11.CKF_GENERATE, UsedBy: "domain key v2 and v2 tenant keys"},
	{Mechs: []uint{pkcs11.CKM_SHA256_HMAC}, Flags: pkcs11.CKF_SIGN, UsedBy: "blob v2 key derivation (SP 800-108 over HMAC)"},
	{Mechs: []uint{pkcs11.CKM_AES_ECB_ENCRYPT_DATA}, Flags: pkcs11.CKF_DERIVE, UsedBy: "blob v1 key derivation (profiles with ECBDerive; others write v2)",
		Profile: func(p Profile) bool { return p.ECBDerive }},
	{Mechs: []uint{CKM_AES_KEY_WRAP_KWP, pkcs11.CKM_AES_KEY_WRAP_PAD}, Flags: pkcs11.CKF_WRAP | pkcs11.CKF_UNWRAP, UsedBy: "hsm export-keys/import-keys (disaster recovery, RFC 5649)"},
}

// MechanismRow is one checked row of the table.
type MechanismRow struct {
	Mechanism string `json:"mechanism"`          // the one found, or the first wanted
	Flags     string `json:"flags"`              // required flags
	UsedBy    string `json:"used_by"`            // what needs it
	Status    string `json:"status"`             // "ok", "missing", "missing flags: ..."
	Fallback  string `json:"fallback,omitempty"` // the alternative used, when the first is missing
}

// MechanismReport is a token's checked table.
type MechanismReport struct {
	Rows []MechanismRow `json:"mechanisms"`
	// Missing lists the rows the token cannot serve.
	Missing []MechanismRow `json:"missing,omitempty"`
	// WrapPad is the RFC 5649 wrap mechanism found (KWP or PAD), 0 when none.
	WrapPad uint `json:"-"`
}

// Err is nil when nothing is missing, else an error naming every missing
// mechanism and what needs it, wrapping ErrMechanismsMissing.
func (r MechanismReport) Err(token string) error {
	if len(r.Missing) == 0 {
		return nil
	}
	parts := make([]string, len(r.Missing))
	for i, m := range r.Missing {
		parts[i] = fmt.Sprintf("%s (%s; %s)", m.Mechanism, m.Status, m.UsedBy)
	}
	return fmt.Errorf("%w: token %q: %s: %w", ErrMechanismsMissing, token, strings.Join(parts, ", "), shared.ErrConfigValidation)
}

// CheckMechanisms reads the slot's mechanism list and flags and checks them
// against what profile needs.
func CheckMechanisms(p P11, slot uint, profile Profile) (MechanismReport, error) {
	list, err := p.GetMechanismList(slot)
	if err != nil {
		return MechanismReport{}, fmt.Errorf("keyworker: mechanism list of slot %d: %w", slot, err)
	}
	have := map[uint]bool{}
	for _, m := range list {
		have[m.Mechanism] = true
	}
	var r MechanismReport
	for _, need := range mechanismNeeds {
		if need.Profile != nil && !need.Profile(profile) {
			continue
		}
		row := MechanismRow{Mechanism: MechanismName(need.Mechs[0]), Flags: flagNames(need.Flags), UsedBy: need.UsedBy, Status: "missing"}
		for i, m := range need.Mechs {
			if !have[m] {
				continue
			}
			info, err := p.GetMechanismInfo(slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(m, nil)})
			if err != nil {
				row.Status = "no mechanism info: " + ckrName(err)
				continue
			}
			if lack := need.Flags &^ info.Flags; lack != 0 {
				row.Status = "missing flags: " + flagNames(lack)
				continue
			}
			row.Status = "ok"
			if i > 0 {
				row.Fallback = MechanismName(m)
			}
			if need.Mechs[0] == CKM_AES_KEY_WRAP_KWP {
				r.WrapPad = m
			}
			break
		}
		r.Rows = append(r.Rows, row)
		if row.Status != "ok" {
			r.Missing = append(r.Missing, row)
		}
	}
	return r, nil
}

// MechanismName names a mechanism the table uses.
func MechanismName(m uint) string {
	switch m {
	case pkcs11.CKM_AES_KEY_GEN:
		return "CKM_AES_KEY_GEN"
	case pkcs11.CKM_AES_GCM:
		return "CKM_AES_GCM"
	case pkcs11.CKM_EC_KEY_PAIR_GEN:
		return "CKM_EC_KEY_PAIR_GEN"
	case pkcs11.CKM_ECDSA:
		return "CKM_ECDSA"
	case pkcs11.CKM_AES_KEY_WRAP:
		return "CKM_AES_KEY_WRAP"
	case pkcs11.CKM_GENERIC_SECRET_KEY_GEN:
		return "CKM_GENERIC_SECRET_KEY_GEN"
	case pkcs11.CKM_SHA256_HMAC:
		return "CKM_SHA256_HMAC"
	case pkcs11.CKM_AES_ECB_ENCRYPT_DATA:
		return "CKM_AES_ECB_ENCRYPT_DATA"
	case CKM_AES_KEY_WRAP_KWP:
		return "CKM_AES_KEY_WRAP_KWP"
	case pkcs11.CKM_AES_KEY_WRAP_PAD:
		return "CKM_AES_KEY_WRAP_PAD"
	}
	return fmt.Sprintf("CKM_%#x", m)
}

func flagNames(f uint) string {
	var out []string
	for _, n := range []struct {
		f    uint
		name string
	}{{pkcs11.CKF_ENCRYPT, "encrypt"}, {pkcs11.CKF_DECRYPT, "decrypt"}, {pkcs11.CKF_SIGN, "sign"},
		{pkcs11.CKF_GENERATE, "generate"}, {pkcs11.CKF_GENERATE_KEY_PAIR, "generate_key_pair"},
		{pkcs11.CKF_WRAP, "wrap"}, {pkcs11.CKF_UNWRAP, "unwrap"}, {pkcs11.CKF_DERIVE, "derive"}} {
		if f&n.f != 0 {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, "|")
}

// InspectToken loads the module and checks the mechanisms of the token
// labelled label, or of slot when label is empty, without logging in
// (`sovkeys hsm check`).
func InspectToken(modulePath, label string, slot uint, profileName string) (MechanismReport, error) {
	profile, err := LookupProfile(profileName)
	if err != nil {
		return MechanismReport{}, err
	}
	mod, err := modules.acquire(modulePath)
	if err != nil {
		return MechanismReport{}, err
	}
	defer func() { _ = modules.release(mod) }()
	if label != "" {
		s, found, err := findTokenSlot(mod.ctx, label)
		if err != nil {
			return MechanismReport{}, err
		}
		if !found {
			return MechanismReport{}, fmt.Errorf("keyworker: token %q not found in module %q: %w", label, modulePath, shared.ErrConfigValidation)
		}
		slot = s
	}
	return CheckMechanisms(mod.ctx, slot, profile)
}
