package hsm

// Repairing a token that holds the key hierarchy twice (two keyworker
// processes created it at once before the cluster-wide lease existed): every
// operation on a duplicated label fails, so one copy is kept and the others
// are destroyed, only when the operator confirms.

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/miekg/pkcs11"
)

// HierarchyCopy is one copy of a hierarchy key: the domain key, or both
// halves of a key pair (same CKA_ID).
type HierarchyCopy struct {
	Label   string
	ID      string // hex CKA_ID ("" for the domain key)
	Handles []uint // the token objects of this copy
	Keep    bool
}

// RepairHierarchy lists the copies of every hierarchy label that has more
// than one, marking the one kept: the copy whose CKA_ID is keep[label] when
// given, else the first found. With destroy, the others are destroyed.
func (h *HSM) RepairHierarchy(ctx context.Context, keep map[string]string, destroy bool) ([]HierarchyCopy, error) {
	var out []HierarchyCopy
	err := h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		out = out[:0]
		for _, label := range []string{DomainKeyLabel, SigningKeyLabel, CAKeyLabel} {
			copies, err := h.hierarchyCopies(sh, label)
			if err != nil {
				return err
			}
			if len(copies) < 2 {
				continue
			}
			k := 0
			if want, ok := keep[label]; ok {
				if k = slices.IndexFunc(copies, func(c HierarchyCopy) bool { return c.ID == want }); k < 0 {
					return fmt.Errorf("keyworker: no copy of %q has id %s", label, want)
				}
			}
			copies[k].Keep = true
			out = append(out, copies...)
		}
		if !destroy {
			return nil
		}
		for _, c := range out {
			if c.Keep {
				continue
			}
			for _, o := range c.Handles {
				if err := h.p11.DestroyObject(sh, pkcs11.ObjectHandle(o)); err != nil {
					return fmt.Errorf("keyworker: destroy duplicate %q (id %s): %w", c.Label, c.ID, err)
				}
			}
		}
		return nil
	})
	if err == nil && destroy && len(out) > 0 {
		h.hier.forgetTokenKeys()
		h.logger.WarnContext(ctx, "duplicate hierarchy keys destroyed", "token", h.cfg.TokenLabel, "copies", len(out))
	}
	return out, err
}

func (h *HSM) hierarchyCopies(sh pkcs11.SessionHandle, label string) ([]HierarchyCopy, error) {
	if label == DomainKeyLabel {
		handles, err := h.findObjects(sh, aesKeyTemplate(label), -1)
		if err != nil {
			return nil, err
		}
		var out []HierarchyCopy
		for _, o := range handles {
			out = append(out, HierarchyCopy{Label: label, ID: fmt.Sprintf("handle-%d", o), Handles: []uint{uint(o)}})
		}
		return out, nil
	}
	var out []HierarchyCopy
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		handles, err := h.findObjects(sh, ecKeyTemplate(class, label), -1)
		if err != nil {
			return nil, err
		}
		for _, o := range handles {
			attrs, err := h.p11.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
			if err != nil {
				return nil, fmt.Errorf("keyworker: read %q id: %w", label, err)
			}
			id := hex.EncodeToString([]byte(attrString(attrs, pkcs11.CKA_ID)))
			if i := slices.IndexFunc(out, func(c HierarchyCopy) bool { return c.ID == id }); i >= 0 {
				out[i].Handles = append(out[i].Handles, uint(o))
				continue
			}
			out = append(out, HierarchyCopy{Label: label, ID: id, Handles: []uint{uint(o)}})
		}
	}
	return out, nil
}
