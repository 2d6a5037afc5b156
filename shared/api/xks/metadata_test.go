package xks

import (
	"bytes"
	"errors"
	"testing"
)

func TestKeyVersionMetadataRoundTrip(t *testing.T) {
	t.Parallel()
	for _, v := range []int{1, 2, 3, 255, 256, MaxKeyVersion} {
		md := EncodeKeyVersion(v)
		if len(md) > MaxCiphertextMetadataBytes {
			t.Fatalf("metadata of %d bytes exceeds the spec limit", len(md))
		}
		got, err := DecodeKeyVersion(md)
		if err != nil || got != v {
			t.Fatalf("DecodeKeyVersion(EncodeKeyVersion(%d)) = %d, %v", v, got, err)
		}
	}
	if !bytes.Equal(EncodeKeyVersion(3), []byte{MetadataFormatV1, 0, 0, 0, 3}) {
		t.Fatalf("wire format changed: % x", EncodeKeyVersion(3))
	}
}

func TestDecodeKeyVersionRefusesForeignMetadata(t *testing.T) {
	t.Parallel()
	if v, err := DecodeKeyVersion(nil); err != nil || v != 1 {
		t.Fatalf("absent metadata = %d, %v; want version 1", v, err)
	}
	for name, md := range map[string][]byte{
		"unknown format":  {0x02, 0, 0, 0, 2},
		"short":           {MetadataFormatV1, 0, 2},
		"long":            {MetadataFormatV1, 0, 0, 0, 2, 0},
		"version zero":    {MetadataFormatV1, 0, 0, 0, 0},
		"version too big": {MetadataFormatV1, 0xff, 0xff, 0xff, 0xff},
		"aws style 20 B":  bytes.Repeat([]byte{0xaa}, 20),
	} {
		if _, err := DecodeKeyVersion(md); !errors.Is(err, ErrBadMetadata) {
			t.Errorf("%s: err = %v, want ErrBadMetadata", name, err)
		}
	}
}
