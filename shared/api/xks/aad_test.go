package xks

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
)

func TestEncodeAAD(t *testing.T) {
	t.Parallel()
	long := bytes.Repeat([]byte{'a'}, 0x1234)
	for _, tc := range []struct {
		name      string
		aad, meta []byte
		want      []byte
	}{
		{"both absent", nil, nil, []byte{0, 0, 0}},
		{"both empty", []byte{}, []byte{}, []byte{0, 0, 0}},
		{"AAD only", []byte("ab"), nil, []byte{0, 2, 'a', 'b', 0}},
		{"metadata only", nil, []byte("m"), []byte{0, 0, 1, 'm'}},
		{"both", []byte("ab"), []byte("xyz"), []byte{0, 2, 'a', 'b', 3, 'x', 'y', 'z'}},
		{"AAD length big-endian", long, nil, append(append([]byte{0x12, 0x34}, long...), 0)},
		{"20-byte metadata", nil, bytes.Repeat([]byte{7}, 20), append([]byte{0, 0, 20}, bytes.Repeat([]byte{7}, 20)...)},
		{"largest encodable AAD", bytes.Repeat([]byte{1}, 0xffff), nil,
			append(append([]byte{0xff, 0xff}, bytes.Repeat([]byte{1}, 0xffff)...), 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := EncodeAAD(tc.aad, tc.meta); !bytes.Equal(got, tc.want) {
				t.Errorf("EncodeAAD = %x, want %x", got, tc.want)
			}
		})
	}
}

// TestEncodeAADSeparatesFields is the specification's reason for the
// lengths: moving bytes between AAD and metadata must change the encoding.
func TestEncodeAADSeparatesFields(t *testing.T) {
	t.Parallel()
	pairs := [][2][]byte{
		{[]byte("x"), nil}, {nil, []byte("x")},
		{[]byte("xy"), []byte("z")}, {[]byte("x"), []byte("yz")},
		{nil, nil}, {[]byte{0}, nil}, {nil, []byte{0}},
	}
	seen := map[string]int{}
	for i, p := range pairs {
		k := string(EncodeAAD(p[0], p[1]))
		if j, dup := seen[k]; dup {
			t.Errorf("pairs %d and %d encode the same: %x", j, i, k)
		}
		seen[k] = i
	}
}

func TestEncodeAADPanicsOnUnencodable(t *testing.T) {
	t.Parallel()
	for name, args := range map[string][2][]byte{
		"AAD over 65535":    {make([]byte, 0x10000), nil},
		"metadata over 255": {nil, make([]byte, 0x100)},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("EncodeAAD did not panic")
				}
			}()
			EncodeAAD(args[0], args[1])
		})
	}
}

// TestCDIVSpecExample checks the worked example of the specification's
// Appendix C byte for byte.
func TestCDIVSpecExample(t *testing.T) {
	t.Parallel()
	hexBytes := func(s string) []byte {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	aad := hexBytes("70 72 6f 6a 65 63 74 3d 6e 69 6c 65 2c 64 65 70 61 72 74 6d 65 6e 74 3d 6d 61 72 6b 65 74 69 6e 67")
	meta := hexBytes("6b 65 79 5f 76 65 72 73 69 6f 6e 3d 31")
	iv := hexBytes("1c ca e5 47 0f 39 70 02 54 77 90 31")
	ct := hexBytes("82 1c 64 2b 5b 71 78 33 67 de af 18")
	tag := hexBytes("bc 1c 4d da 77 07 d6 81 24 47 c5 95 5e 99 b2 61")
	if len(aad)+len(meta)+len(iv)+len(ct)+len(tag) != 86 {
		t.Fatal("example is not 86 bytes")
	}
	// The hex in the appendix is the decoded form of the JSON examples.
	for name, pair := range map[string]struct {
		b64 string
		raw []byte
	}{
		"AAD": {specAADB64, aad}, "metadata": {specMetaB64, meta}, "IV": {specIVB64, iv},
		"ciphertext": {specCiphertext, ct}, "tag": {specTagB64, tag},
	} {
		if got := base64.StdEncoding.EncodeToString(pair.raw); got != pair.b64 {
			t.Errorf("%s: base64 %s, want %s", name, got, pair.b64)
		}
	}

	got := CDIV(aad, meta, iv, ct, tag)
	if h := hex.EncodeToString(got); h != "a8703f2260bd8791ec2d15ea0b23e65a0631eedcf2a13a65cc82db3f47cf5ec7" {
		t.Errorf("CDIV = %s", h)
	}
	if b := base64.StdEncoding.EncodeToString(got); b != specCDIVB64 {
		t.Errorf("CDIV base64 = %s, want %s", b, specCDIVB64)
	}

	// The response example of the Encrypt section, as our type writes it.
	resp, err := json.Marshal(EncryptResponse{
		AuthenticationTag: tag, Ciphertext: ct, CiphertextDataIntegrityValue: got,
		CiphertextMetadata: meta, InitializationVector: iv,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"authenticationTag":"vBxN2ncH1oEkR8WVXpmyYQ==","ciphertext":"ghxkK1txeDNn3q8Y",` +
		`"initializationVector":"HMrlRw85cAJUd5Ax","ciphertextMetadata":"a2V5X3ZlcnNpb249MQ==",` +
		`"ciphertextDataIntegrityValue":"qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="}`
	if string(resp) != want {
		t.Errorf("EncryptResponse JSON =\n%s\nwant\n%s", resp, want)
	}
}

// TestCDIVAbsentFields: an absent field is the empty string in the
// concatenation (Appendix C), whichever field it is.
func TestCDIVAbsentFields(t *testing.T) {
	t.Parallel()
	iv, ct, tag := []byte("iviviviviviv"), []byte("ct"), bytes.Repeat([]byte{9}, 16)
	all := func(parts ...[]byte) []byte { return CDIV(bytes.Join(parts, nil), nil, nil, nil, nil) }
	for _, tc := range []struct {
		name      string
		aad, meta []byte
	}{
		{"neither", nil, nil},
		{"AAD only", []byte("aad"), nil},
		{"metadata only", nil, []byte("meta")},
		{"both", []byte("aad"), []byte("meta")},
		{"empty AAD", []byte{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := CDIV(tc.aad, tc.meta, iv, ct, tag)
			if want := all(tc.aad, tc.meta, iv, ct, tag); !bytes.Equal(got, want) {
				t.Errorf("CDIV = %x, want %x", got, want)
			}
			if len(got) != 32 {
				t.Errorf("CDIV has %d bytes, want 32", len(got))
			}
		})
	}
}
