package hsm

// The contexts EKTs and instance secrets are bound to.

import (
	"encoding/binary"

	"github.com/sovkeys/sovkeys/shared"
)

const maxContextSize = 4096

// EKTContext is the context an EKT is bound to: its EKT name.
func EKTContext(ektName string) []byte {
	return encodeContext("sovkeys/ekt-context/v1", ektName)
}

// SecretContext is the context an encrypted_secret is bound to.
func SecretContext(tenant, instanceID, volumeUUID string) []byte {
	return encodeContext("sovkeys/secret-context/v1", tenant, instanceID, volumeUUID)
}

// encodeContext is canonical and injective: each field (the kind first) is
// a big-endian uint32 length and the bytes, so no two field lists encode
// alike ("a","bc" differs from "ab","c").
func encodeContext(kind string, fields ...string) []byte {
	var b []byte
	for _, f := range append([]string{kind}, fields...) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

func validateContext(what string, c []byte) error {
	if len(c) == 0 || len(c) > maxContextSize {
		return shared.NewError(shared.CodeValidation, "keyworker: %s context must be 1 to %d bytes", what, maxContextSize)
	}
	return nil
}
