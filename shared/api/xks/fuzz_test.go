package xks

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

// checkParseError: a parse failure is always a caller-safe *shared.Error with
// a validation or size code, never an internal one.
func checkParseError(t *testing.T, err error) {
	t.Helper()
	var se *shared.Error
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T) is not a *shared.Error", err, err)
	}
	if se.Code != shared.CodeValidation && se.Code != shared.CodeUnsupportedOperation {
		t.Fatalf("error code %q (%q), want validation or unsupported_operation", se.Code, se.Message)
	}
	for i := 0; i < len(se.Message); i++ {
		if c := se.Message[i]; c < 0x20 || c > 0x7e {
			t.Fatalf("message %q is not printable ASCII", se.Message)
		}
	}
	if len(se.Message) >= 512 {
		t.Fatalf("message has %d characters", len(se.Message))
	}
}

func addBodySeeds(f *testing.F, bodies ...[]byte) {
	for _, b := range bodies {
		f.Add(b)
	}
	for _, s := range []string{
		``, `{}`, `null`, `[]`, `{"requestMetadata":{}}`, `{"requestMetadata":null}`,
		`{"requestMetadata":{"kmsRequestId":"a","kmsRequestId":"b"}}`,
		`{"a":1}{"b":2}`, `{"plaintext":"QQ=="`, `{"plaintext":"\u0051Q=="}`,
		"{\"requestMetadata\":{\"kmsOperation\":\"\xff\"}}",
	} {
		f.Add([]byte(s))
	}
}

func FuzzParseEncrypt(f *testing.F) {
	addBodySeeds(f,
		mustJSON(f, encryptBody()),
		with(f, encryptBody(), "additionalAuthenticatedData", del),
		with(f, encryptBody(), "plaintext", b64(MaxPlaintextBytes)),
		with(f, encryptBody(), "ciphertextDataIntegrityValueAlgorithm", "SHA_512"),
		mustJSON(f, decryptBody()),
	)
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseEncrypt(body)
		if err != nil {
			if r != nil {
				t.Fatal("non-nil request with an error")
			}
			checkParseError(t, err)
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("parsed request does not validate: %v", err)
		}
		if len(r.Plaintext) == 0 || len(r.Plaintext) > MaxPlaintextBytes || len(r.AdditionalAuthenticatedData) > MaxAADBytes {
			t.Fatalf("limits not enforced: plaintext %d, AAD %d", len(r.Plaintext), len(r.AdditionalAuthenticatedData))
		}
		_ = EncodeAAD(r.AdditionalAuthenticatedData, nil) // must not panic
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := ParseEncrypt(again)
		if err != nil {
			t.Fatalf("re-marshalled request does not parse: %v", err)
		}
		if !encryptEqual(r, r2) {
			t.Fatalf("round trip changed the request: %+v != %+v", r, r2)
		}
		checkEncryptWork(t, r)
	})
}

func FuzzParseDecrypt(f *testing.F) {
	addBodySeeds(f,
		mustJSON(f, decryptBody()),
		with(f, decryptBody(), "initializationVector", b64(IVLongBytes)),
		with(f, decryptBody(), "ciphertextMetadata", del),
		with(f, decryptBody(), "authenticationTag", b64(15)),
		mustJSON(f, encryptBody()),
	)
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseDecrypt(body)
		if err != nil {
			if r != nil {
				t.Fatal("non-nil request with an error")
			}
			checkParseError(t, err)
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("parsed request does not validate: %v", err)
		}
		if n := len(r.InitializationVector); n != IVBytes && n != IVLongBytes {
			t.Fatalf("IV of %d bytes accepted", n)
		}
		if len(r.AuthenticationTag) != TagBytes || len(r.CiphertextMetadata) > MaxCiphertextMetadataBytes ||
			len(r.Ciphertext) == 0 || len(r.Ciphertext) > MaxCiphertextBytes || len(r.AdditionalAuthenticatedData) > MaxAADBytes {
			t.Fatalf("limits not enforced: %+v", r)
		}
		aad := EncodeAAD(r.AdditionalAuthenticatedData, r.CiphertextMetadata)
		if want := 3 + len(r.AdditionalAuthenticatedData) + len(r.CiphertextMetadata); len(aad) != want {
			t.Fatalf("EncodeAAD length %d, want %d", len(aad), want)
		}
		if !bytes.Equal(aad[2:2+len(r.AdditionalAuthenticatedData)], r.AdditionalAuthenticatedData) {
			t.Fatal("EncodeAAD does not carry the AAD")
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := ParseDecrypt(again)
		if err != nil {
			t.Fatalf("re-marshalled request does not parse: %v", err)
		}
		if !decryptEqual(r, r2) {
			t.Fatalf("round trip changed the request: %+v != %+v", r, r2)
		}
		checkDecryptWork(t, r)
	})
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{
		"/kms/xks/v1/health",
		"/kms/xks/v1/keys/foo/encrypt",
		"/p/kms/xks/v1/keys/foo/decrypt",
		"/a/b-c/d_e/kms/xks/v1/keys/k.1/metadata",
		"/kms/xks/v1/kms/xks/v1/health",
		"/kms/xks/v1/keys//encrypt",
		"/kms/xks/v1/keys/../encrypt",
		"/kms/xks/v1/keys/a%20b/encrypt",
		"//kms/xks/v1/health",
		"/kms/xks/v1/health/",
		"",
		"/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		r, err := ParsePath(path)
		if err != nil {
			switch shared.CodeOf(err) {
			case shared.CodeInvalidURIPath:
				if r != (Route{}) {
					t.Fatalf("invalid path returned route %+v", r)
				}
			case shared.CodeKeyNotFound:
				if r.KeyID != "" || !ValidPrefix(r.Prefix) || (r.Op != OpMetadata && r.Op != OpEncrypt && r.Op != OpDecrypt) {
					t.Fatalf("key-not-found route %+v", r)
				}
			default:
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if !ValidPrefix(r.Prefix) {
			t.Fatalf("invalid prefix %q accepted", r.Prefix)
		}
		if r.Op == OpHealth {
			if r.KeyID != "" {
				t.Fatalf("health route with key %q", r.KeyID)
			}
		} else if !ValidKeyID(r.KeyID) {
			t.Fatalf("invalid key id %q accepted", r.KeyID)
		}
		// A parsed path is canonical: rebuilding it gives the input back.
		if got := r.Path(); got != path {
			t.Fatalf("Route.Path() = %q, input %q", got, path)
		}
	})
}

// FuzzDecodeObjectFast: whenever the one-pass split accepts an input, the
// token decoder accepts it too, with the same members.
func FuzzDecodeObjectFast(f *testing.F) {
	addBodySeeds(f, mustJSON(f, encryptBody()), mustJSON(f, decryptBody()),
		[]byte(`{"a":[1,{"b":"}"}],"c":"\"","d":-1.5e3,"e":null,"f":true}`), []byte(` { } `),
		[]byte(`{"a":1,"a":2}`), []byte(`{"p\u0061":1,"pa":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := decodeObjectFast(data, "")
		if !ok {
			return
		}
		slow, err := decodeObjectSlow(data, "")
		if err != nil {
			t.Fatalf("fast path accepted what the decoder refuses: %v", err)
		}
		if len(fast.members) != len(slow.members) {
			t.Fatalf("members: fast %d, decoder %d", len(fast.members), len(slow.members))
		}
		for name, v := range slow.members {
			if !bytes.Equal(bytes.TrimSpace(fast.members[name]), bytes.TrimSpace(v)) {
				t.Fatalf("member %q: fast %q, decoder %q", name, fast.members[name], v)
			}
		}
	})
}
