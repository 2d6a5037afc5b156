package xks

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// EncodeAAD returns the AAD the HSM's AES-GCM operation must use for an XKS
// encrypt or decrypt, as the specification defines it (Encrypt,
// ciphertextMetadata):
//
//	be16(len(aad)) || aad || u8(len(ciphertextMetadata)) || ciphertextMetadata
//
// An absent field has length zero, so with neither the result is the three
// bytes 00 00 00, never empty; an absent and an empty field encode the same.
// The lengths keep the two fields apart: AAD "x" with no metadata and no AAD
// with metadata "x" authenticate differently.
//
// The inputs must come from a validated request (len(aad) <= MaxAADBytes,
// len(ciphertextMetadata) <= MaxCiphertextMetadataBytes). Lengths the format
// cannot express (aad over 65535 bytes, metadata over 255) are a programming
// error and panic rather than produce an AAD that silently differs.
func EncodeAAD(aad, ciphertextMetadata []byte) []byte {
	if len(aad) > 0xffff || len(ciphertextMetadata) > 0xff {
		panic(fmt.Sprintf("xks: EncodeAAD: aad of %d bytes or ciphertextMetadata of %d bytes cannot be encoded",
			len(aad), len(ciphertextMetadata)))
	}
	out := make([]byte, 0, 2+len(aad)+1+len(ciphertextMetadata))
	out = binary.BigEndian.AppendUint16(out, uint16(len(aad)))
	out = append(out, aad...)
	out = append(out, byte(len(ciphertextMetadata)))
	return append(out, ciphertextMetadata...)
}

// CDIV returns the ciphertext data integrity value of an encrypt (the
// specification's Appendix C): SHA-256 over the decoded
//
//	aad || ciphertextMetadata || iv || ciphertext || tag
//
// where aad is the request's additionalAuthenticatedData and the rest is the
// response. Absent fields contribute nothing; no lengths are included (the
// CDIV guards against accidental corruption, not forgery). The result is the
// raw 32-byte digest; EncryptResponse base64-encodes it on the wire.
//
// Compute it from the HSM's output before checking that output with a
// decrypt, as Appendix C requires.
func CDIV(aad, ciphertextMetadata, iv, ciphertext, tag []byte) []byte {
	h := sha256.New()
	for _, b := range [][]byte{aad, ciphertextMetadata, iv, ciphertext, tag} {
		h.Write(b)
	}
	return h.Sum(nil)
}
