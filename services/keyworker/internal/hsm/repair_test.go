package hsm

import (
	"context"
	"testing"

	"github.com/miekg/pkcs11"
)

// A token holding two domain keys (two keyworkers created the hierarchy at
// once) is unusable; the repair lists both, destroys nothing without
// confirmation, then keeps one and the hierarchy works again.
func TestRepairHierarchyDuplicateDomainKey(t *testing.T) {
	h := newHierarchyHSM(t)
	ctx := context.Background()
	if err := h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := h.p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, append(aesTemplate(true, false, pkcs11.CKA_DERIVE),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, hierKeySize), pkcs11.NewAttribute(pkcs11.CKA_LABEL, DomainKeyLabel)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	h.hier.forgetTokenKeys()
	if err := h.EnsureHierarchy(ctx); err == nil {
		t.Fatal("a token with two domain keys passed EnsureHierarchy")
	}
	copies, err := h.RepairHierarchy(ctx, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(copies) != 2 || !copies[0].Keep || copies[1].Keep || copies[0].Label != DomainKeyLabel {
		t.Fatalf("dry run: %+v", copies)
	}
	if err := h.EnsureHierarchy(ctx); err == nil {
		t.Fatal("the dry run destroyed something")
	}
	if _, err := h.RepairHierarchy(ctx, map[string]string{DomainKeyLabel: "handle-0"}, true); err == nil {
		t.Fatal("an unknown copy to keep was accepted")
	}
	if _, err := h.RepairHierarchy(ctx, map[string]string{DomainKeyLabel: copies[1].ID}, true); err != nil {
		t.Fatal(err)
	}
	if err := h.EnsureHierarchy(ctx); err != nil {
		t.Fatalf("after repair: %v", err)
	}
	if left, err := h.RepairHierarchy(ctx, nil, false); err != nil || len(left) != 0 {
		t.Fatalf("after repair: %+v %v", left, err)
	}
}
