package hsm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Token data objects (CKO_DATA)
//
// State no NATS credential may roll back lives in the token, next to the
// key that depends on it: the audit signer keeps the last tree it signed
// per log there (services/keyworker/admin_audit_state.go). A data object
// is private (readable after login only), not modifiable by anyone who
// cannot log in, and found by its label.

// ErrDataChanged: CompareAndSwapData found another value than expected
// (another caller wrote first).
var ErrDataChanged = errors.New("keyworker: hsm data object changed meanwhile")

// maxDataObject bounds a data object's value.
const maxDataObject = 16 << 10

func dataTemplate(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// ReadData returns the value of the token data object labelled label, or
// nil and no error when there is none.
func (h *HSM) ReadData(ctx context.Context, label string) ([]byte, error) {
	var out []byte
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		v, _, err := h.readData(sh, label)
		out = v
		return err
	})
	return out, err
}

// A data object's value cannot be changed in place (SoftHSM refuses
// C_SetAttributeValue on CKA_VALUE), so a write creates a new object with
// the next version (CKA_OBJECT_ID, 8 bytes big-endian), then destroys the
// older ones. A crash between the two leaves both: readers take the
// highest version, and the next write removes the rest.

type dataObject struct {
	value   []byte
	version uint64
	handles []pkcs11.ObjectHandle // every object with the label
}

func (h *HSM) readData(sh pkcs11.SessionHandle, label string) ([]byte, pkcs11.ObjectHandle, error) {
	d, err := h.readDataObject(sh, label)
	var handle pkcs11.ObjectHandle
	if len(d.handles) > 0 {
		handle = d.handles[0]
	}
	return d.value, handle, err
}

func (h *HSM) readDataObject(sh pkcs11.SessionHandle, label string) (dataObject, error) {
	var d dataObject
	handles, err := h.findObjects(sh, dataTemplate(label), 16)
	if err != nil {
		return d, err
	}
	d.handles = handles
	for i, o := range handles {
		attrs, err := h.p11.GetAttributeValue(sh, o, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil), pkcs11.NewAttribute(pkcs11.CKA_OBJECT_ID, nil)})
		if err != nil || len(attrs) != 2 {
			return d, fmt.Errorf("keyworker: read data object %q: %w", label, err)
		}
		var version uint64
		if len(attrs[1].Value) == 8 {
			version = binary.BigEndian.Uint64(attrs[1].Value)
		}
		if i == 0 || version > d.version {
			d.value, d.version = attrs[0].Value, version
		}
	}
	return d, nil
}

// CompareAndSwapData sets the value of data object label to value if it
// holds old now (old nil: if there is none, which creates it), and
// returns ErrDataChanged otherwise. The check and the write run while no
// other call of this process uses the module; PKCS#11 has no lock across
// processes, so callers serialise those too (the audit signer first moves
// its KV state with a compare-and-set).
func (h *HSM) CompareAndSwapData(ctx context.Context, label string, old, value []byte) error {
	if len(value) == 0 || len(value) > maxDataObject {
		return fmt.Errorf("keyworker: data object %q: value of %d bytes", label, len(value))
	}
	return h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		cur, err := h.readDataObject(sh, label)
		if err != nil {
			return err
		}
		if !bytes.Equal(cur.value, old) || (old == nil) != (len(cur.handles) == 0) {
			return ErrDataChanged
		}
		var version [8]byte
		binary.BigEndian.PutUint64(version[:], cur.version+1)
		t := append(dataTemplate(label),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, "sovkeys"),
			pkcs11.NewAttribute(pkcs11.CKA_OBJECT_ID, version[:]),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, value))
		if _, err := h.p11.CreateObject(sh, t); err != nil {
			return fmt.Errorf("keyworker: create data object %q: %w", label, err)
		}
		for _, o := range cur.handles {
			if err := h.p11.DestroyObject(sh, o); err != nil {
				return fmt.Errorf("keyworker: replace data object %q: %w", label, err)
			}
		}
		return nil
	})
}

// DestroyData removes data object label (tests simulating a token written
// by an earlier version).
func (h *HSM) DestroyData(ctx context.Context, label string) error {
	return h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		d, err := h.readDataObject(sh, label)
		if err != nil {
			return err
		}
		for _, o := range d.handles {
			if err := h.p11.DestroyObject(sh, o); err != nil {
				return err
			}
		}
		return nil
	})
}
