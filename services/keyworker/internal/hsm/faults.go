package hsm

// FaultP11: a P11 that delegates to the real module and injects return
// values, for tests of the keyworker's fault handling against real SoftHSM
// (Config.WrapP11). It is inert unless a test installs rules.

import (
	"crypto/rand"
	"reflect"
	"slices"
	"sync"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// Fault is one injected failure: the next Times calls of Op (a P11 method
// name, e.g. "Decrypt") return CKR without reaching the module (Times <= 0:
// every call). Mutate, when set instead of CKR, lets the call through and
// rewrites its output (Encrypt, Decrypt).
type Fault struct {
	Op     string
	CKR    uint
	Times  int
	Mutate func([]byte) []byte
	After  int // let this many matching calls through first
}

// FaultP11 wraps a P11. Refused mechanisms answer CKR_MECHANISM_INVALID
// everywhere a mechanism is named, as an HSM without them does.
type FaultP11 struct {
	P11
	mu      sync.Mutex
	faults  []Fault
	refused map[uint]bool
	calls   map[string]int
	hsmIV   bool
}

// EmulateHSMIV makes C_EncryptInit with CKM_AES_GCM act as CloudHSM and
// Luna do: the caller's IV buffer must be zeroed (else
// CKR_MECHANISM_PARAM_INVALID), and the "HSM" chooses a fresh random IV,
// which the caller reads back with GCMParams.IV after C_Encrypt. SoftHSM
// then encrypts under that IV. miekg/pkcs11 v1.1.2 serialises the GCM
// parameters inside EncryptInit, so the emulation swaps the IV of the
// unexported *GCMParams before that (reflection; test use only).
func (f *FaultP11) EmulateHSMIV() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hsmIV = true
}

func (f *FaultP11) fillHSMIV(m []*pkcs11.Mechanism) error {
	f.mu.Lock()
	on := f.hsmIV
	f.mu.Unlock()
	if !on || len(m) == 0 || m[0].Mechanism != pkcs11.CKM_AES_GCM {
		return nil
	}
	gen := reflect.ValueOf(m[0]).Elem().FieldByName("generator")
	if !gen.IsValid() || gen.Kind() != reflect.Interface || gen.IsNil() {
		return pkcs11.Error(pkcs11.CKR_MECHANISM_PARAM_INVALID)
	}
	params, ok := (*(*any)(unsafe.Pointer(gen.UnsafeAddr()))).(*pkcs11.GCMParams)
	if !ok {
		return pkcs11.Error(pkcs11.CKR_MECHANISM_PARAM_INVALID)
	}
	ivField := reflect.ValueOf(params).Elem().FieldByName("iv")
	if !ivField.IsValid() || ivField.Type() != reflect.TypeFor[[]byte]() {
		return pkcs11.Error(pkcs11.CKR_GENERAL_ERROR) // miekg/pkcs11 changed: update the emulation
	}
	iv := (*[]byte)(unsafe.Pointer(ivField.UnsafeAddr()))
	if len(*iv) == 0 || slices.ContainsFunc(*iv, func(b byte) bool { return b != 0 }) {
		return pkcs11.Error(pkcs11.CKR_MECHANISM_PARAM_INVALID) // a host-chosen IV
	}
	fresh := make([]byte, len(*iv))
	_, _ = rand.Read(fresh)
	*iv = fresh // a new slice: the caller's zeroed buffer stays zero, as on the HSM
	return nil
}

// NewFaultP11 wraps p.
func NewFaultP11(p P11) *FaultP11 {
	return &FaultP11{P11: p, refused: map[uint]bool{}, calls: map[string]int{}}
}

// Inject adds faults, consumed in order per operation.
func (f *FaultP11) Inject(faults ...Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, faults...)
}

// Refuse makes the wrapped module act as if it lacked the mechanisms.
func (f *FaultP11) Refuse(mechs ...uint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range mechs {
		f.refused[m] = true
	}
}

// Calls reports how many times op was called (faulted or not).
func (f *FaultP11) Calls(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// take returns the fault for op, if one is pending, and counts the call.
func (f *FaultP11) take(op string) (Fault, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	i := slices.IndexFunc(f.faults, func(x Fault) bool { return x.Op == op })
	if i < 0 {
		return Fault{}, false
	}
	if f.faults[i].After > 0 {
		f.faults[i].After--
		return Fault{}, false
	}
	fl := f.faults[i]
	if fl.Times > 0 {
		f.faults[i].Times--
		if f.faults[i].Times == 0 {
			f.faults = slices.Delete(f.faults, i, i+1)
		}
	}
	return fl, true
}

func (f *FaultP11) mechRefused(m []*pkcs11.Mechanism) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(m) > 0 && f.refused[m[0].Mechanism]
}

var errMechanismInvalid = pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID)

// fail returns the injected error of op, if any (Mutate faults pass).
func (f *FaultP11) fail(op string) (Fault, error) {
	fl, ok := f.take(op)
	if ok && fl.Mutate == nil {
		return fl, pkcs11.Error(fl.CKR)
	}
	return fl, nil
}

func (f *FaultP11) OpenSession(slot uint, flags uint) (pkcs11.SessionHandle, error) {
	if _, err := f.fail("OpenSession"); err != nil {
		return 0, err
	}
	return f.P11.OpenSession(slot, flags)
}

func (f *FaultP11) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	if _, err := f.fail("GetSessionInfo"); err != nil {
		return pkcs11.SessionInfo{}, err
	}
	return f.P11.GetSessionInfo(sh)
}

func (f *FaultP11) GetMechanismInfo(slot uint, m []*pkcs11.Mechanism) (pkcs11.MechanismInfo, error) {
	if f.mechRefused(m) {
		return pkcs11.MechanismInfo{}, errMechanismInvalid
	}
	return f.P11.GetMechanismInfo(slot, m)
}

// GetMechanismList leaves out the refused mechanisms.
func (f *FaultP11) GetMechanismList(slot uint) ([]*pkcs11.Mechanism, error) {
	list, err := f.P11.GetMechanismList(slot)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(list, func(m *pkcs11.Mechanism) bool { return f.mechRefused([]*pkcs11.Mechanism{m}) }), nil
}

func (f *FaultP11) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	if _, err := f.fail("FindObjectsInit"); err != nil {
		return err
	}
	return f.P11.FindObjectsInit(sh, temp)
}

func (f *FaultP11) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if f.mechRefused(m) {
		return errMechanismInvalid
	}
	if _, err := f.fail("EncryptInit"); err != nil {
		return err
	}
	if err := f.fillHSMIV(m); err != nil {
		return err
	}
	return f.P11.EncryptInit(sh, m, o)
}

func (f *FaultP11) Encrypt(sh pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	fl, err := f.fail("Encrypt")
	if err != nil {
		// A failed C_Encrypt ends the operation, as PKCS#11 requires.
		_, _ = f.P11.Encrypt(sh, msg)
		return nil, err
	}
	out, err := f.P11.Encrypt(sh, msg)
	if err == nil && fl.Mutate != nil {
		out = fl.Mutate(out)
	}
	return out, err
}

func (f *FaultP11) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if f.mechRefused(m) {
		return errMechanismInvalid
	}
	if _, err := f.fail("DecryptInit"); err != nil {
		return err
	}
	return f.P11.DecryptInit(sh, m, o)
}

func (f *FaultP11) Decrypt(sh pkcs11.SessionHandle, in []byte) ([]byte, error) {
	fl, err := f.fail("Decrypt")
	if err != nil {
		_, _ = f.P11.Decrypt(sh, in) // end the operation, as a failed C_Decrypt does
		return nil, err
	}
	out, err := f.P11.Decrypt(sh, in)
	if err == nil && fl.Mutate != nil {
		out = fl.Mutate(out)
	}
	return out, err
}

func (f *FaultP11) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if f.mechRefused(m) {
		return 0, errMechanismInvalid
	}
	return f.P11.GenerateKey(sh, m, temp)
}

func (f *FaultP11) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	if f.mechRefused(m) {
		return 0, 0, errMechanismInvalid
	}
	return f.P11.GenerateKeyPair(sh, m, public, private)
}

func (f *FaultP11) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if f.mechRefused(m) {
		return 0, errMechanismInvalid
	}
	return f.P11.DeriveKey(sh, m, base, a)
}

func (f *FaultP11) WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrapping, key pkcs11.ObjectHandle) ([]byte, error) {
	if f.mechRefused(m) {
		return nil, errMechanismInvalid
	}
	return f.P11.WrapKey(sh, m, wrapping, key)
}

func (f *FaultP11) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrapping pkcs11.ObjectHandle, wrapped []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if f.mechRefused(m) {
		return 0, errMechanismInvalid
	}
	return f.P11.UnwrapKey(sh, m, unwrapping, wrapped, a)
}

func (f *FaultP11) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if f.mechRefused(m) {
		return errMechanismInvalid
	}
	return f.P11.SignInit(sh, m, o)
}
