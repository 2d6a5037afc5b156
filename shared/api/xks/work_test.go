package xks

import (
	"bytes"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

// checkEncryptWork: the work form of a parsed request gives back its
// cryptographic fields.
func checkEncryptWork(t testing.TB, r *EncryptRequest) {
	t.Helper()
	w, err := ParseEncryptWork(r.AppendWork(nil))
	if err != nil {
		t.Fatalf("work form of a valid request: %v", err)
	}
	if !bytes.Equal(w.Plaintext, r.Plaintext) || !bytes.Equal(w.AdditionalAuthenticatedData, r.AdditionalAuthenticatedData) ||
		w.CiphertextDataIntegrityValueAlgorithm != r.CiphertextDataIntegrityValueAlgorithm || w.EncryptionAlgorithm != r.EncryptionAlgorithm {
		t.Fatalf("work form changed the request: %+v != %+v", w, r)
	}
}

func checkDecryptWork(t testing.TB, r *DecryptRequest) {
	t.Helper()
	w, err := ParseDecryptWork(r.AppendWork(nil))
	if err != nil {
		t.Fatalf("work form of a valid request: %v", err)
	}
	for _, f := range [][2][]byte{{w.Ciphertext, r.Ciphertext}, {w.InitializationVector, r.InitializationVector},
		{w.AuthenticationTag, r.AuthenticationTag}, {w.AdditionalAuthenticatedData, r.AdditionalAuthenticatedData},
		{w.CiphertextMetadata, r.CiphertextMetadata}} {
		if !bytes.Equal(f[0], f[1]) {
			t.Fatalf("work form changed the request: %+v != %+v", w, r)
		}
	}
	if w.EncryptionAlgorithm != r.EncryptionAlgorithm || w.RequestMetadata != (RequestMetadata{}) {
		t.Fatalf("work form: algorithm %q, metadata %+v", w.EncryptionAlgorithm, w.RequestMetadata)
	}
}

func TestWorkRoundTrip(t *testing.T) {
	enc, err := ParseEncrypt(mustJSON(t, encryptBody()))
	if err != nil {
		t.Fatal(err)
	}
	checkEncryptWork(t, enc)
	dec, err := ParseDecrypt(mustJSON(t, decryptBody()))
	if err != nil {
		t.Fatal(err)
	}
	checkDecryptWork(t, dec)
}

// A work record that is not exactly what AppendWork writes, or that holds
// values the parser would have refused, is a validation error.
func TestWorkRefusesMalformed(t *testing.T) {
	enc := (&EncryptRequest{Plaintext: []byte("p"), CiphertextDataIntegrityValueAlgorithm: CDIVAlgorithmSHA256}).AppendWork(nil)
	dec := (&DecryptRequest{Ciphertext: []byte("c"), InitializationVector: make([]byte, IVBytes), AuthenticationTag: make([]byte, TagBytes)}).AppendWork(nil)
	big := bytes.Repeat([]byte{1}, MaxPlaintextBytes+1)
	for _, tc := range []struct {
		name string
		rec  []byte
		dec  bool
	}{
		{"empty", nil, false},
		{"raw JSON", mustJSON(t, encryptBody()), false},
		{"decrypt record as encrypt", dec, false},
		{"encrypt record as decrypt", enc, true},
		{"truncated", enc[:len(enc)-1], false},
		{"trailing bytes", append(append([]byte{}, enc...), 0), false},
		{"length past the end", append([]byte(workMagic+"E"), 0x7f, 'x'), false},
		{"empty plaintext", (&EncryptRequest{}).AppendWork(nil), false},
		{"plaintext too large", (&EncryptRequest{Plaintext: big}).AppendWork(nil), false},
		{"other cdiv algorithm", (&EncryptRequest{Plaintext: []byte("p"), CiphertextDataIntegrityValueAlgorithm: "SHA_512"}).AppendWork(nil), false},
		{"short iv", (&DecryptRequest{Ciphertext: []byte("c"), InitializationVector: make([]byte, 8), AuthenticationTag: make([]byte, TagBytes)}).AppendWork(nil), true},
		{"no tag", (&DecryptRequest{Ciphertext: []byte("c"), InitializationVector: make([]byte, IVBytes)}).AppendWork(nil), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.dec {
				_, err = ParseDecryptWork(tc.rec)
			} else {
				_, err = ParseEncryptWork(tc.rec)
			}
			if c := shared.CodeOf(err); c != shared.CodeValidation && c != shared.CodeUnsupportedOperation {
				t.Fatalf("got %v (code %q), want a validation error", err, c)
			}
		})
	}
}

func FuzzParseWork(f *testing.F) {
	f.Add((&EncryptRequest{Plaintext: []byte("p")}).AppendWork(nil))
	f.Add((&DecryptRequest{Ciphertext: []byte("c"), InitializationVector: make([]byte, IVBytes), AuthenticationTag: make([]byte, TagBytes)}).AppendWork(nil))
	f.Fuzz(func(t *testing.T, rec []byte) {
		if r, err := ParseEncryptWork(rec); err == nil {
			checkEncryptWork(t, r)
		}
		if r, err := ParseDecryptWork(rec); err == nil {
			checkDecryptWork(t, r)
		}
	})
}
