package vs

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

func rsaDER(t testing.TB, bits int) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestParseGenerate(t *testing.T) {
	t.Parallel()
	good := base64.StdEncoding.EncodeToString(rsaDER(t, 2048))
	small := base64.StdEncoding.EncodeToString(rsaDER(t, 1024))
	for _, tc := range []struct {
		name, body, wantErr string
	}{
		{"valid", `{"rsa_wrapping_key":"` + good + `","volume_uuid":"vol-1"}`, ""},
		{"small rsa key", `{"rsa_wrapping_key":"` + small + `","volume_uuid":"vol-1"}`, "1024 bits"},
		{"not spki", `{"rsa_wrapping_key":"AAAA","volume_uuid":"vol-1"}`, "SubjectPublicKeyInfo"},
		{"missing key", `{"volume_uuid":"vol-1"}`, "rsa_wrapping_key is required"},
		{"bad base64", `{"rsa_wrapping_key":"!!!","volume_uuid":"vol-1"}`, "base64"},
		{"bad volume", `{"rsa_wrapping_key":"` + good + `","volume_uuid":"a/b"}`, "volume_uuid"},
		{"unknown field", `{"rsa_wrapping_key":"` + good + `","volume_uuid":"v","x":1}`, "unknown field"},
		{"trailing data", `{"rsa_wrapping_key":"` + good + `","volume_uuid":"v"} {}`, "trailing"},
		{"not json", `{`, "malformed"},
		{"wrong type", `{"rsa_wrapping_key":1,"volume_uuid":"v"}`, "wrong type"},
		{"too large", `{"volume_uuid":"` + strings.Repeat("a", MaxBodyBytes) + `"}`, "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseGenerate([]byte(tc.body))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || shared.CodeOf(err) != shared.CodeValidation {
				t.Fatalf("got %v, want validation error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseDecryptAndConvert(t *testing.T) {
	t.Parallel()
	key := base64.StdEncoding.EncodeToString(rsaDER(t, 2048))
	if _, _, err := ParseDecrypt([]byte(`{"encrypted_secret":"AQID","rsa_wrapping_key":"` + key + `","volume_uuid":"v"}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ParseDecrypt([]byte(`{"encrypted_secret":"","rsa_wrapping_key":"` + key + `","volume_uuid":"v"}`)); err == nil {
		t.Fatal("empty encrypted_secret accepted")
	}
	if _, err := ParseConvert([]byte(`{"encrypted_secret":"AQID","volume_uuid":"v","source_instance_id":"i-1"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseConvert([]byte(`{"encrypted_secret":"AQID","volume_uuid":"v","source_instance_id":""}`)); err == nil {
		t.Fatal("empty source_instance_id accepted")
	}
}

func TestParsePath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path, id string
		op       Op
		code     shared.Code
	}{
		{"/v1/encryption/i-1/generate-secret", "i-1", OpGenerate, ""},
		{"/v1/encryption/i-1/decrypt-secret", "i-1", OpDecrypt, ""},
		{"/v1/encryption/i-1/convert-secret", "i-1", OpConvert, ""},
		{"/v1/encryption/i-1/rotate", "", "", shared.CodeInvalidURIPath},
		{"/v1/encryption/i-1", "", "", shared.CodeInvalidURIPath},
		{"/v2/encryption/i-1/generate-secret", "", "", shared.CodeInvalidURIPath},
		{"/v1/encryption/i%2F1/generate-secret", "", "", shared.CodeValidation},
	} {
		t.Run(tc.path, func(t *testing.T) {
			id, op, err := ParsePath(tc.path)
			if tc.code != "" {
				if shared.CodeOf(err) != tc.code {
					t.Fatalf("got %v, want %s", err, tc.code)
				}
				return
			}
			if err != nil || id != tc.id || op != tc.op {
				t.Fatalf("got %q %q %v", id, op, err)
			}
		})
	}
}

func FuzzParseRequests(f *testing.F) {
	key := base64.StdEncoding.EncodeToString(rsaDER(f, 2048))
	for _, s := range []string{
		`{"rsa_wrapping_key":"` + key + `","volume_uuid":"vol-1"}`,
		`{"encrypted_secret":"AQID","rsa_wrapping_key":"` + key + `","volume_uuid":"v"}`,
		`{"encrypted_secret":"AQID","volume_uuid":"v","source_instance_id":"i-1"}`,
		`{`, `null`, `[]`, `{"volume_uuid":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, parse := range []func([]byte) error{
			func(b []byte) error { _, _, err := ParseGenerate(b); return err },
			func(b []byte) error { _, _, err := ParseDecrypt(b); return err },
			func(b []byte) error { _, err := ParseConvert(b); return err },
		} {
			if err := parse(body); err != nil {
				if shared.CodeOf(err) != shared.CodeValidation {
					t.Fatalf("non-validation error %v", err)
				}
				if !json.Valid([]byte(`"`+strings.ReplaceAll(err.Error(), `"`, "")+`"`)) && len(err.Error()) > 4096 {
					t.Fatalf("oversized error message")
				}
			}
		}
		_, _, _ = ParsePath(string(body))
	})
}
