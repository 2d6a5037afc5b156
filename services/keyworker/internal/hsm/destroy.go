package hsm

import (
	"context"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/shared"
)

// DestroyKey destroys every version of the key labelled label: the end of
// a key deletion whose waiting period is over (the registry entry goes
// after). It returns how many versions it destroyed; a key already gone
// destroys none, so a retry after a crash finishes the job.
func (h *HSM) DestroyKey(ctx context.Context, label string) (int, error) {
	n := 0
	err := h.withSessionExclusive(ctx, func(sh pkcs11.SessionHandle) error {
		vs, err := h.keyVersions(sh, label)
		if errors.Is(err, shared.ErrKeyNotFound) || shared.CodeOf(err) == shared.CodeKeyNotFound {
			return nil
		}
		if err != nil {
			return err
		}
		for _, v := range vs {
			k, err := h.findKey(sh, v.Label)
			if err != nil {
				return err
			}
			if err := h.p11.DestroyObject(sh, k.handle); err != nil {
				return fmt.Errorf("keyworker: destroy key %q version %d: %w", label, v.Version, err)
			}
			h.keys.drop(v.Label)
			n++
		}
		return nil
	})
	if n > 0 {
		h.logger.WarnContext(ctx, "key destroyed", "label", label, "versions", n)
	}
	return n, err
}
