package hsm

// Key material leaves the HSM only wrapped (disaster recovery,
// docs/operations.md): ExportKeys wraps every token key with RFC 5649
// (CKM_AES_KEY_WRAP_KWP, or SoftHSM 2.6's CKM_AES_KEY_WRAP_PAD) under a
// backup key the security officer marks CKA_TRUSTED for the length of one
// session; ImportKeys unwraps them into another token with the same labels
// and attributes. Token keys are made CKA_WRAP_WITH_TRUSTED (keys.go,
// objects.go, hierarchy.go), so no other key can wrap them; keys made
// before that are not extractable and are listed for cloning with the
// vendor's tools.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// BackupKeySize is the size of the backup key (AES-256).
const BackupKeySize = 32

// ErrImportConflict is wrapped when the target token already holds a key
// under a label being imported.
var ErrImportConflict = errors.New("keyworker: target token already holds keys being imported")

// TokenLogin names a token and the PINs of an export or import. The PINs
// are never logged.
type TokenLogin struct {
	ModulePath string
	TokenLabel string
	SOPIN      string // export only: marks the backup key CKA_TRUSTED
	PIN        string
}

// ExportedKey is one token object, wrapped (secret and private keys) or in
// clear (public keys), with the attributes import gives it back.
type ExportedKey struct {
	Label    string          `json:"label"`
	ID       []byte          `json:"id,omitempty"`
	Class    string          `json:"class"`    // secret, private, public
	KeyType  string          `json:"key_type"` // aes, generic_secret, ec
	ValueLen int             `json:"value_len,omitempty"`
	Usage    map[string]bool `json:"usage"`
	Private  bool            `json:"private"`
	ECParams []byte          `json:"ec_params,omitempty"`
	ECPoint  []byte          `json:"ec_point,omitempty"` // public keys
	Wrapped  []byte          `json:"wrapped,omitempty"`  // RFC 5649 under the backup key
}

// KeyExport is what ExportKeys returns.
type KeyExport struct {
	Mechanism string        `json:"mechanism"`
	Keys      []ExportedKey `json:"keys"`
	// CloneWithVendorTools lists keys that are not extractable (made
	// before backups existed): the operator clones them with the HSM
	// vendor's backup tools, or the data under them is lost with the HSM.
	CloneWithVendorTools []string `json:"clone_with_vendor_tools,omitempty"`
}

var usageAttrs = []struct {
	name string
	attr uint
}{{"encrypt", pkcs11.CKA_ENCRYPT}, {"decrypt", pkcs11.CKA_DECRYPT}, {"sign", pkcs11.CKA_SIGN},
	{"verify", pkcs11.CKA_VERIFY}, {"derive", pkcs11.CKA_DERIVE}, {"wrap", pkcs11.CKA_WRAP}, {"unwrap", pkcs11.CKA_UNWRAP}}

var classNames = map[uint]string{pkcs11.CKO_SECRET_KEY: "secret", pkcs11.CKO_PRIVATE_KEY: "private", pkcs11.CKO_PUBLIC_KEY: "public"}
var keyTypeNames = map[uint]string{pkcs11.CKK_AES: "aes", pkcs11.CKK_GENERIC_SECRET: "generic_secret", pkcs11.CKK_EC: "ec", ckkECEdwards: "ec_edwards"}

func lookupName(m map[uint]string, name string) (uint, bool) {
	for k, v := range m {
		if v == name {
			return k, true
		}
	}
	return 0, false
}

// tokenSession loads the module and opens a read-write session on the
// token; close ends the session (and its session objects) and releases
// the module.
func tokenSession(t TokenLogin) (p P11, slot uint, sh pkcs11.SessionHandle, closeFn func(), err error) {
	if t.ModulePath == "" || t.TokenLabel == "" || t.PIN == "" {
		return nil, 0, 0, nil, fmt.Errorf("keyworker: module, token label and PIN are required: %w", shared.ErrConfigValidation)
	}
	mod, err := modules.acquire(t.ModulePath)
	if err != nil {
		return nil, 0, 0, nil, err
	}
	p = mod.ctx
	slot, found, err := findTokenSlot(p, t.TokenLabel)
	if err == nil && !found {
		err = fmt.Errorf("keyworker: token %q not found in module %q: %w", t.TokenLabel, t.ModulePath, shared.ErrConfigValidation)
	}
	if err == nil {
		sh, err = p.OpenSession(slot, sessionFlags)
	}
	if err != nil {
		_ = modules.release(mod)
		return nil, 0, 0, nil, err
	}
	return p, slot, sh, func() { _ = p.CloseSession(sh); _ = modules.release(mod) }, nil
}

// wrapPadMechanism returns the RFC 5649 mechanism of the slot.
func wrapPadMechanism(p P11, slot uint) (uint, error) {
	r, err := CheckMechanisms(p, slot, Profile{})
	if err != nil {
		return 0, err
	}
	if r.WrapPad == 0 {
		return 0, fmt.Errorf("%w: neither CKM_AES_KEY_WRAP_KWP nor CKM_AES_KEY_WRAP_PAD: keys cannot be exported or imported wrapped", ErrMechanismsMissing)
	}
	return r.WrapPad, nil
}

// ExportKeys wraps every key object of the token under backupKey. The
// security officer's login makes a session object of backupKey trusted
// (CKA_TRUSTED can be set only by the SO); the user's login then wraps
// each key. The backup key never becomes a token object.
func ExportKeys(ctx context.Context, t TokenLogin, backupKey []byte) (KeyExport, error) {
	if len(backupKey) != BackupKeySize {
		return KeyExport{}, fmt.Errorf("keyworker: backup key must be %d bytes: %w", BackupKeySize, shared.ErrConfigValidation)
	}
	if t.SOPIN == "" {
		return KeyExport{}, fmt.Errorf("keyworker: the security officer's PIN is required to mark the backup key trusted: %w", shared.ErrConfigValidation)
	}
	p, slot, sh, closeFn, err := tokenSession(t)
	if err != nil {
		return KeyExport{}, err
	}
	defer closeFn()
	mech, err := wrapPadMechanism(p, slot)
	if err != nil {
		return KeyExport{}, err
	}
	if err := p.Login(sh, pkcs11.CKU_SO, t.SOPIN); err != nil {
		return KeyExport{}, fmt.Errorf("keyworker: security officer login to token %q: %w", t.TokenLabel, err)
	}
	bk, err := p.CreateObject(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "sovkeys-backup-session"),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, backupKey),
	})
	if lerr := p.Logout(sh); err == nil && lerr != nil {
		err = lerr
	}
	if err != nil {
		return KeyExport{}, fmt.Errorf("keyworker: make the trusted backup key: %w", err)
	}
	defer destroy(p, sh, bk)
	if err := p.Login(sh, pkcs11.CKU_USER, t.PIN); err != nil {
		return KeyExport{}, fmt.Errorf("keyworker: login to token %q: %w", t.TokenLabel, err)
	}
	defer func() { _ = p.Logout(sh) }()
	h := &HSM{p11: p}
	handles, err := h.findObjects(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}, -1)
	if err != nil {
		return KeyExport{}, err
	}
	out := KeyExport{Mechanism: MechanismName(mech)}
	for _, o := range handles {
		if err := ctx.Err(); err != nil {
			return KeyExport{}, err
		}
		k, exportable, err := exportOne(p, sh, o, mech, bk)
		switch {
		case err != nil:
			return KeyExport{}, err
		case k.Class == "":
			continue // not a key (data object, certificate)
		case !exportable:
			out.CloneWithVendorTools = append(out.CloneWithVendorTools, k.Label)
			continue
		}
		out.Keys = append(out.Keys, k)
	}
	slices.SortFunc(out.Keys, func(a, b ExportedKey) int {
		return strings.Compare(a.Label+"\x00"+a.Class, b.Label+"\x00"+b.Class)
	})
	slices.Sort(out.CloneWithVendorTools)
	out.CloneWithVendorTools = slices.Compact(out.CloneWithVendorTools)
	return out, nil
}

// exportOne reads one object; keys that are secret or private are wrapped.
func exportOne(p P11, sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, mech uint, bk pkcs11.ObjectHandle) (ExportedKey, bool, error) {
	attrs, err := p.GetAttributeValue(sh, o, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil), pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
	})
	if err != nil {
		return ExportedKey{}, false, fmt.Errorf("keyworker: export: read object: %w", err)
	}
	class, ok := classNames[ulong(attrs, pkcs11.CKA_CLASS)]
	if !ok {
		return ExportedKey{}, false, nil
	}
	k := ExportedKey{Class: class, Label: attrString(attrs, pkcs11.CKA_LABEL), Usage: map[string]bool{}}
	query := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil), pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil)}
	for _, u := range usageAttrs {
		query = append(query, pkcs11.NewAttribute(u.attr, nil))
	}
	switch class {
	case "secret":
		query = append(query, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil))
	case "private":
		query = append(query, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil))
	case "public":
		query = append(query, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil))
	}
	// Attributes a key type lacks (CKA_EC_PARAMS of a non-EC key) are
	// asked one by one so one refusal does not hide the rest.
	for _, q := range query {
		got, err := p.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(q.Type, nil)})
		if err == nil {
			attrs = append(attrs, got...)
		}
	}
	kt, ok := keyTypeNames[ulong(attrs, pkcs11.CKA_KEY_TYPE)]
	if !ok {
		// A key type import cannot recreate: the vendor's tools clone it.
		return k, false, nil
	}
	k.KeyType, k.ID, k.Private = kt, []byte(attrString(attrs, pkcs11.CKA_ID)), attrBool(attrs, pkcs11.CKA_PRIVATE)
	for _, u := range usageAttrs {
		if attrBool(attrs, u.attr) {
			k.Usage[u.name] = true
		}
	}
	k.ValueLen = int(ulong(attrs, pkcs11.CKA_VALUE_LEN))
	k.ECParams = []byte(attrString(attrs, pkcs11.CKA_EC_PARAMS))
	if class == "public" {
		k.ECPoint = []byte(attrString(attrs, pkcs11.CKA_EC_POINT))
		return k, true, nil
	}
	if !attrBool(attrs, pkcs11.CKA_EXTRACTABLE) {
		return k, false, nil
	}
	k.Wrapped, err = p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, bk, o)
	if isCKR(err, pkcs11.CKR_KEY_NOT_WRAPPABLE) || isCKR(err, pkcs11.CKR_KEY_UNEXTRACTABLE) {
		// A key type this token will not wrap (SoftHSM 2.6: EdDSA).
		return k, false, nil
	}
	if err != nil {
		return ExportedKey{}, false, fmt.Errorf("keyworker: export: wrap %q: %w", k.Label, err)
	}
	return k, true, nil
}

// ulong reads a CK_ULONG attribute (native endian, 4 or 8 bytes).
func ulong(attrs []*pkcs11.Attribute, typ uint) uint {
	for _, a := range attrs {
		if a.Type == typ {
			var n uint
			for i := len(a.Value) - 1; i >= 0; i-- { // little endian (amd64, arm64)
				n = n<<8 | uint(a.Value[i])
			}
			return n
		}
	}
	return 0
}

// ImportKeys unwraps exp's keys into the token with the same labels, ids
// and attributes (token keys, sensitive, extractable only under a trusted
// key, so the new token can be backed up in turn). The token must hold
// none of the labels (ErrImportConflict, nothing created); a key that does
// not unwrap (wrong backup key, altered file) stops the import, and the
// keys imported before it are destroyed.
func ImportKeys(ctx context.Context, t TokenLogin, backupKey []byte, exp KeyExport) (int, error) {
	if len(backupKey) != BackupKeySize {
		return 0, fmt.Errorf("keyworker: backup key must be %d bytes: %w", BackupKeySize, shared.ErrConfigValidation)
	}
	p, slot, sh, closeFn, err := tokenSession(t)
	if err != nil {
		return 0, err
	}
	defer closeFn()
	mech, err := wrapPadMechanism(p, slot)
	if err != nil {
		return 0, err
	}
	if err := p.Login(sh, pkcs11.CKU_USER, t.PIN); err != nil && !isCKR(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		return 0, fmt.Errorf("keyworker: login to token %q: %w", t.TokenLabel, err)
	}
	defer func() { _ = p.Logout(sh) }()
	h := &HSM{p11: p}
	var taken []string
	for _, k := range exp.Keys {
		got, err := h.findObjects(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, k.Label)}, 1)
		if err != nil {
			return 0, err
		}
		if len(got) > 0 && !slices.Contains(taken, k.Label) {
			taken = append(taken, k.Label)
		}
	}
	if len(taken) > 0 {
		return 0, fmt.Errorf("%w: %s (import into an empty token)", ErrImportConflict, strings.Join(taken, ", "))
	}
	uk, err := p.CreateObject(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, backupKey),
	})
	if err != nil {
		return 0, fmt.Errorf("keyworker: load the backup key: %w", err)
	}
	defer destroy(p, sh, uk)
	var made []pkcs11.ObjectHandle
	undo := func() {
		for _, o := range made {
			destroy(p, sh, o)
		}
	}
	for _, k := range exp.Keys {
		if err := ctx.Err(); err != nil {
			undo()
			return 0, err
		}
		o, err := importOne(p, sh, mech, uk, k)
		if err != nil {
			undo()
			return 0, err
		}
		made = append(made, o)
	}
	return len(made), nil
}

func importOne(p P11, sh pkcs11.SessionHandle, mech uint, uk pkcs11.ObjectHandle, k ExportedKey) (pkcs11.ObjectHandle, error) {
	class, ok1 := lookupName(classNames, k.Class)
	kt, ok2 := lookupName(keyTypeNames, k.KeyType)
	if !ok1 || !ok2 || k.Label == "" {
		return 0, fmt.Errorf("keyworker: import: key %q: unknown class %q or type %q: %w", k.Label, k.Class, k.KeyType, shared.ErrConfigValidation)
	}
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, k.Private),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, k.Label),
	}
	if len(k.ID) > 0 {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_ID, k.ID))
	}
	for _, u := range usageAttrs {
		if k.Class == "public" && u.name != "verify" && u.name != "encrypt" && u.name != "wrap" && u.name != "derive" {
			continue
		}
		if k.Class == "private" && (u.name == "verify" || u.name == "encrypt" || u.name == "wrap") {
			continue
		}
		t = append(t, pkcs11.NewAttribute(u.attr, k.Usage[u.name]))
	}
	if k.Class == "public" {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, k.ECParams), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, k.ECPoint))
		o, err := p.CreateObject(sh, t)
		if err != nil {
			return 0, fmt.Errorf("keyworker: import public key %q: %w", k.Label, err)
		}
		return o, nil
	}
	// RFC 5649 wraps a 32-byte key into 40 bytes, and any 25 to 32 bytes
	// into as many: with AES key lengths of 16, 24 or 32 this pins the
	// length keySpec reports when the token does not (keys.go).
	if k.Class == "secret" && len(k.Wrapped) != 40 {
		return 0, fmt.Errorf("keyworker: import: key %q is not a 256-bit key (%d wrapped bytes): %w", k.Label, len(k.Wrapped), shared.ErrConfigValidation)
	}
	t = append(t, pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true))
	o, err := p.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, uk, k.Wrapped, t)
	if err != nil {
		return 0, fmt.Errorf("keyworker: import: unwrap %q (wrong backup key, or keys of another deployment?): %w", k.Label, err)
	}
	return o, nil
}
