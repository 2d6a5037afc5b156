package xks

import (
	"encoding/binary"
	"errors"
)

// The ciphertextMetadata sovkeys writes: which version of a rotated key
// made the ciphertext.
//
//	u8(MetadataFormatV1) || be32(keyVersion)
//
// Five bytes, well inside MaxCiphertextMetadataBytes. KMS stores the value
// with its ciphertext and returns it on decrypt; EncodeAAD binds it into the
// AAD, so a changed version byte fails authentication rather than select a
// different key version that might succeed. A ciphertext without metadata
// was made before the key was first rotated (or before sovkeys wrote
// metadata) and is version 1.
const (
	MetadataFormatV1 = 0x01
	metadataV1Len    = 5
	// MaxKeyVersion bounds key versions (the format could hold 2^32-1).
	MaxKeyVersion = 1 << 20
)

// ErrBadMetadata: ciphertextMetadata is not a format sovkeys wrote. A decrypt
// answers InvalidCiphertextException: such a ciphertext cannot be ours.
var ErrBadMetadata = errors.New("xks: ciphertextMetadata is not a sovkeys key-version record")

// EncodeKeyVersion returns the ciphertextMetadata naming key version v (>= 1).
func EncodeKeyVersion(v int) []byte {
	if v < 1 || v > MaxKeyVersion {
		panic("xks: EncodeKeyVersion: version out of range")
	}
	out := make([]byte, 0, metadataV1Len)
	out = append(out, MetadataFormatV1)
	return binary.BigEndian.AppendUint32(out, uint32(v))
}

// DecodeKeyVersion returns the key version a ciphertextMetadata names:
// 1 for absent or empty metadata, ErrBadMetadata for anything that is not
// exactly a v1 record with a version in [1, MaxKeyVersion].
func DecodeKeyVersion(md []byte) (int, error) {
	if len(md) == 0 {
		return 1, nil
	}
	if len(md) != metadataV1Len || md[0] != MetadataFormatV1 {
		return 0, ErrBadMetadata
	}
	v := binary.BigEndian.Uint32(md[1:])
	if v < 1 || v > MaxKeyVersion {
		return 0, ErrBadMetadata
	}
	return int(v), nil
}
