package auditlog

import (
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// The HSM signs a scope's checkpoint only after checking a consistency
// proof from the last checkpoint it signed for that origin (kept by the
// signing keyworkers in KV shared.BucketAuditSigner, which the audit service
// can read but not write). So whoever drives the audit service cannot get
// two diverging trees signed, nor roll a log back. Witnesses apply the same
// rule (CheckAdvance) with their own state.

// Errors of CheckAdvance.
var (
	// ErrOldSize: the request's old size is not the last signed size
	// (C2SP tlog-witness answers 409 with the size).
	ErrOldSize = errors.New("auditlog: old size does not match the last signed checkpoint")
	// ErrInconsistent: the consistency proof does not verify, or the same
	// size was signed with another root: the log forked or was rewritten.
	ErrInconsistent = errors.New("auditlog: checkpoint is not consistent with the last signed one")
	// ErrBadRequest: sizes out of order, proof where none is allowed.
	ErrBadRequest = errors.New("auditlog: malformed checkpoint request")
)

// MaxProofHashes bounds a consistency proof (C2SP tlog-witness: 63 lines).
const MaxProofHashes = 63

// CheckAdvance checks that the tree (size, root) extends the last signed
// tree (lastSize, lastRoot), given the caller's view oldSize of the last
// signed size and a consistency proof from oldSize to size.
func CheckAdvance(lastSize int64, lastRoot tlog.Hash, oldSize int64, proof [][]byte, size int64, root tlog.Hash) error {
	switch {
	case oldSize < 0 || size < 1 || oldSize > size:
		return fmt.Errorf("%w: old size %d, size %d", ErrBadRequest, oldSize, size)
	case len(proof) > MaxProofHashes:
		return fmt.Errorf("%w: %d proof hashes", ErrBadRequest, len(proof))
	case oldSize != lastSize:
		return fmt.Errorf("%w: last signed size is %d, not %d", ErrOldSize, lastSize, oldSize)
	case oldSize == 0:
		if len(proof) != 0 {
			return fmt.Errorf("%w: a proof from size 0", ErrBadRequest)
		}
		return nil
	case oldSize == size:
		if root != lastRoot {
			return fmt.Errorf("%w: size %d was signed with another root", ErrInconsistent, size)
		}
		return nil
	}
	p := make(tlog.TreeProof, len(proof))
	for i, h := range proof {
		if len(h) != tlog.HashSize {
			return fmt.Errorf("%w: proof hash of %d bytes", ErrBadRequest, len(h))
		}
		copy(p[i][:], h)
	}
	if err := tlog.CheckTree(p, size, root, oldSize, lastRoot); err != nil {
		return fmt.Errorf("%w: size %d -> %d: %v", ErrInconsistent, oldSize, size, err)
	}
	return nil
}

// TlogSignRequest asks the signing pool for the checkpoint of a scope's
// tree (SignRequest.Tlog).
type TlogSignRequest struct {
	Deployment string   `json:"deployment"`
	Kind       string   `json:"kind"`
	Scope      string   `json:"scope"`
	OldSize    int64    `json:"old_size"` // the last signed size, as the caller knows it
	Proof      [][]byte `json:"proof"`    // consistency proof OldSize -> Size
	Size       int64    `json:"size"`
	Root       []byte   `json:"root"`
}

// TlogSignResponse is the signed checkpoint, or, when OldSize was not the
// last signed size, Conflict with that size (ask again with a proof from it).
type TlogSignResponse struct {
	Checkpoint []byte `json:"checkpoint,omitempty"` // signed note
	Conflict   bool   `json:"conflict,omitempty"`
	SignedSize int64  `json:"signed_size"`
}

// SignerState is what the signing pool keeps per origin in KV.
type SignerState struct {
	Origin     string `json:"origin"`
	Size       int64  `json:"size"`
	Root       []byte `json:"root"`
	Checkpoint []byte `json:"checkpoint"` // the signed note of Size
}

// SignerStateKey is the KV key of an origin's signer state: the pool, then
// the scope's kind and token (the deployment is checked inside the value).
func SignerStateKey(pool string, s Scope) string { return pool + "." + s.Kind + "." + s.Token() }
