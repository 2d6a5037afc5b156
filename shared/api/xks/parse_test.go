package xks

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

// Values from the specification's examples.
const (
	specPlaintextB64 = "SGVsbG8gV29ybGQh"                             // "Hello World!"
	specAADB64       = "cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n" // "project=nile,department=marketing"
	specMetaB64      = "a2V5X3ZlcnNpb249MQ=="                         // "key_version=1"
	specIVB64        = "HMrlRw85cAJUd5Ax"
	specCiphertext   = "ghxkK1txeDNn3q8Y"
	specTagB64       = "vBxN2ncH1oEkR8WVXpmyYQ=="
	specCDIVB64      = "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="
)

type body = map[string]any

func metadataFields() body {
	return body{
		"awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
		"kmsKeyArn":       "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab",
		"kmsOperation":    "Encrypt",
		"kmsRequestId":    "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
		"kmsViaService":   "ebs",
	}
}

func encryptBody() body {
	return body{
		"requestMetadata":                       metadataFields(),
		"additionalAuthenticatedData":           specAADB64,
		"plaintext":                             specPlaintextB64,
		"encryptionAlgorithm":                   "AES_GCM",
		"ciphertextDataIntegrityValueAlgorithm": "SHA_256",
	}
}

func decryptBody() body {
	md := metadataFields()
	md["kmsOperation"] = "Decrypt"
	return body{
		"requestMetadata":             md,
		"additionalAuthenticatedData": specAADB64,
		"encryptionAlgorithm":         "AES_GCM",
		"ciphertext":                  specCiphertext,
		"ciphertextMetadata":          specMetaB64,
		"initializationVector":        specIVB64,
		"authenticationTag":           specTagB64,
	}
}

func metadataBody() body {
	md := metadataFields()
	md["kmsOperation"] = "DescribeKey"
	return body{"requestMetadata": md}
}

func healthBody() body {
	return body{"requestMetadata": body{
		"kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
		"kmsOperation": "KmsHealthCheck",
	}}
}

// with returns a JSON body: b with the member at path (e.g.
// "requestMetadata.kmsKeyArn") set to v, or deleted when v is del.
func with(t testing.TB, b body, path string, v any) []byte {
	t.Helper()
	m := b
	keys := strings.Split(path, ".")
	for _, k := range keys[:len(keys)-1] {
		m = m[k].(body)
	}
	if v == del {
		delete(m, keys[len(keys)-1])
	} else {
		m[keys[len(keys)-1]] = v
	}
	return mustJSON(t, b)
}

type deleted struct{}

var del = deleted{}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func b64(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, n)) }

type parseFunc func([]byte) error

var parsers = map[string]parseFunc{
	"encrypt":  func(b []byte) error { _, err := ParseEncrypt(b); return err },
	"decrypt":  func(b []byte) error { _, err := ParseDecrypt(b); return err },
	"metadata": func(b []byte) error { _, err := ParseMetadata(b); return err },
	"health":   func(b []byte) error { _, err := ParseHealth(b); return err },
}

var validBodies = map[string]func() body{
	"encrypt": encryptBody, "decrypt": decryptBody, "metadata": metadataBody, "health": healthBody,
}

type errCase struct {
	name string
	body []byte
	code shared.Code
	msg  string // substring of the message
}

// checkErr asserts err is a *shared.Error with code and a message containing
// msg that is printable ASCII and quotes no request content.
func checkErr(t *testing.T, err error, code shared.Code, msg string) {
	t.Helper()
	var se *shared.Error
	if !errors.As(err, &se) {
		t.Fatalf("error = %v (%T), want *shared.Error", err, err)
	}
	if se.Code != code {
		t.Errorf("code = %q, want %q (message %q)", se.Code, code, se.Message)
	}
	if !strings.Contains(se.Message, msg) {
		t.Errorf("message = %q, want it to contain %q", se.Message, msg)
	}
	checkSafeMessage(t, se.Message)
}

func checkSafeMessage(t testing.TB, m string) {
	t.Helper()
	if len(m) >= 512 {
		t.Errorf("message has %d characters, want < 512", len(m))
	}
	for i := 0; i < len(m); i++ {
		if m[i] < 0x20 || m[i] > 0x7e {
			t.Fatalf("message %q has a non-printable byte at %d", m, i)
		}
	}
	for _, secret := range []string{specPlaintextB64, specAADB64, "Hello", "SECRET"} {
		if strings.Contains(m, secret) {
			t.Errorf("message %q quotes request content %q", m, secret)
		}
	}
}

func runErrCases(t *testing.T, parse parseFunc, cases []errCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, parse(tc.body), tc.code, tc.msg)
		})
	}
}

// TestParseBodyErrors covers the rules every operation shares.
func TestParseBodyErrors(t *testing.T) {
	t.Parallel()
	for op, parse := range parsers {
		t.Run(op, func(t *testing.T) {
			valid := validBodies[op]
			huge := append(mustJSON(t, valid()), bytes.Repeat([]byte(" "), MaxBodyBytes)...)
			runErrCases(t, parse, []errCase{
				{"empty body", nil, shared.CodeValidation, "request body is empty"},
				{"body over MaxBodyBytes", huge, shared.CodeUnsupportedOperation, "request body exceeds"},
				{"invalid UTF-8", []byte("{\"requestMetadata\":{\"kmsRequestId\":\"\xff\"}}"), shared.CodeValidation, "not valid UTF-8"},
				{"not JSON", []byte("SECRET"), shared.CodeValidation, "not valid JSON (syntax error at byte offset"},
				{"truncated", []byte(`{"requestMetadata":{`), shared.CodeValidation, "not valid JSON"},
				{"unterminated string", []byte(`{"plaintext":"SECRET`), shared.CodeValidation, "not valid JSON"},
				{"array", []byte(`[{}]`), shared.CodeValidation, "request body must be a JSON object"},
				{"null", []byte(`null`), shared.CodeValidation, "request body must be a JSON object"},
				{"string", []byte(`"SECRET"`), shared.CodeValidation, "request body must be a JSON object"},
				{"trailing garbage", append(mustJSON(t, valid()), "x"...), shared.CodeValidation, "exactly one JSON object"},
				{"second object", append(mustJSON(t, valid()), "{}"...), shared.CodeValidation, "exactly one JSON object"},
				{"duplicate member", []byte(`{"requestMetadata":{},"requestMetadata":{}}`), shared.CodeValidation, `duplicate member "requestMetadata"`},
				{"duplicate escaped member", []byte(`{"requestMetadata":{},"requestMet\u0061data":{}}`), shared.CodeValidation, "duplicate member"},
				{"duplicate odd member name unquoted", []byte(`{"a b":1,"a b":2}`), shared.CodeValidation, "request body has a duplicate member"},
				{"duplicate metadata member", []byte(`{"requestMetadata":{"kmsRequestId":"a","kmsRequestId":"b"}}`), shared.CodeValidation, `requestMetadata has a duplicate member "kmsRequestId"`},
				{"no requestMetadata", []byte(`{}`), shared.CodeValidation, "requestMetadata is required"},
				{"requestMetadata null", []byte(`{"requestMetadata":null}`), shared.CodeValidation, "requestMetadata is required"},
				{"requestMetadata in other case", []byte(`{"RequestMetadata":{"kmsOperation":"x","kmsRequestId":"y"}}`), shared.CodeValidation, "requestMetadata is required"},
				{"requestMetadata string", []byte(`{"requestMetadata":"x"}`), shared.CodeValidation, "requestMetadata must be a JSON object"},
				{"requestMetadata array", []byte(`{"requestMetadata":[]}`), shared.CodeValidation, "requestMetadata must be a JSON object"},
				{"kmsRequestId number", with(t, valid(), "requestMetadata.kmsRequestId", 7), shared.CodeValidation, "requestMetadata.kmsRequestId must be a string"},
				{"kmsOperation object", with(t, valid(), "requestMetadata.kmsOperation", body{}), shared.CodeValidation, "requestMetadata.kmsOperation must be a string"},
				{"awsSourceVpc bool", with(t, valid(), "requestMetadata.awsSourceVpc", true), shared.CodeValidation, "requestMetadata.awsSourceVpc must be a string"},
				{"kmsRequestId missing", with(t, valid(), "requestMetadata.kmsRequestId", del), shared.CodeValidation, "requestMetadata.kmsRequestId is required"},
				{"kmsRequestId empty", with(t, valid(), "requestMetadata.kmsRequestId", ""), shared.CodeValidation, "requestMetadata.kmsRequestId is required"},
				{"kmsOperation missing", with(t, valid(), "requestMetadata.kmsOperation", del), shared.CodeValidation, "requestMetadata.kmsOperation is required"},
				{"kmsOperation null", with(t, valid(), "requestMetadata.kmsOperation", nil), shared.CodeValidation, "requestMetadata.kmsOperation is required"},
			})
		})
	}
}

// TestParseAcceptsForwardCompatible: unknown members and unknown
// kmsOperation values are accepted by every operation.
func TestParseAcceptsForwardCompatible(t *testing.T) {
	t.Parallel()
	for op, parse := range parsers {
		t.Run(op, func(t *testing.T) {
			for name, b := range map[string][]byte{
				"unknown kmsOperation":      with(t, validBodies[op](), "requestMetadata.kmsOperation", "BulkFutureOperation"),
				"unknown metadata member":   with(t, validBodies[op](), "requestMetadata.sourceIdentity", body{"nested": []any{1, "x", nil}}),
				"unknown top-level member":  with(t, validBodies[op](), "futureField", []any{1, 2}),
				"optional metadata null":    with(t, validBodies[op](), "requestMetadata.kmsViaService", nil),
				"VPC fields present":        with(t, validBodies[op](), "requestMetadata.awsSourceVpce", "vpce-1234"),
				"case-variant member extra": with(t, validBodies[op](), "REQUESTMETADATA", "ignored"),
				"whitespace around":         append(append([]byte(" \n\t"), mustJSON(t, validBodies[op]())...), " \r\n"...),
			} {
				t.Run(name, func(t *testing.T) {
					if err := parse(b); err != nil {
						t.Fatalf("parse: %v", err)
					}
				})
			}
		})
	}
}

func TestParseEncrypt(t *testing.T) {
	t.Parallel()
	r, err := ParseEncrypt(mustJSON(t, encryptBody()))
	if err != nil {
		t.Fatal(err)
	}
	want := EncryptRequest{
		RequestMetadata: RequestMetadata{
			AWSPrincipalArn: "arn:aws:iam::123456789012:user/Alice",
			KMSKeyArn:       "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab",
			KMSOperation:    "Encrypt",
			KMSRequestID:    "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
			KMSViaService:   "ebs",
		},
		Plaintext:                             []byte("Hello World!"),
		EncryptionAlgorithm:                   "AES_GCM",
		AdditionalAuthenticatedData:           []byte("project=nile,department=marketing"),
		CiphertextDataIntegrityValueAlgorithm: "SHA_256",
	}
	if r.RequestMetadata != want.RequestMetadata ||
		!bytes.Equal(r.Plaintext, want.Plaintext) ||
		r.EncryptionAlgorithm != want.EncryptionAlgorithm ||
		!bytes.Equal(r.AdditionalAuthenticatedData, want.AdditionalAuthenticatedData) ||
		r.CiphertextDataIntegrityValueAlgorithm != want.CiphertextDataIntegrityValueAlgorithm {
		t.Errorf("ParseEncrypt = %+v, want %+v", r, want)
	}
}

func TestParseEncryptAccepts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"no AAD, no CDIV (Appendix D)", []byte(`{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice",
			"kmsKeyArn":"arn:aws:kms:us-east-2:123456789012:/key/1","kmsOperation":"GenerateDataKey",
			"kmsRequestId":"4112f4d6-db54-4af4-ae30-c55a22a8dfae"},"plaintext":"SGVsbG8gV29ybGQh","encryptionAlgorithm":"AES_GCM"}`)},
		{"empty AAD", with(t, encryptBody(), "additionalAuthenticatedData", "")},
		{"null AAD", with(t, encryptBody(), "additionalAuthenticatedData", nil)},
		{"null CDIV algorithm", with(t, encryptBody(), "ciphertextDataIntegrityValueAlgorithm", nil)},
		{"plaintext at maximum", with(t, encryptBody(), "plaintext", b64(MaxPlaintextBytes))},
		{"spec minimum plaintext 4300", with(t, encryptBody(), "plaintext", b64(4300))},
		{"AAD at maximum", with(t, encryptBody(), "additionalAuthenticatedData", b64(MaxAADBytes))},
		{"escaped member name", []byte(strings.Replace(string(mustJSON(t, encryptBody())), `"plaintext"`, `"pl\u0061intext"`, 1))},
		{"base64 with slash", with(t, encryptBody(), "plaintext", "/w==")},
		{"base64 with JSON-escaped slash", []byte(strings.Replace(string(mustJSON(t, encryptBody())), specPlaintextB64, `\/w==`, 1))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseEncrypt(tc.body); err != nil {
				t.Fatalf("ParseEncrypt: %v", err)
			}
		})
	}
}

func TestParseEncryptErrors(t *testing.T) {
	t.Parallel()
	b := encryptBody
	runErrCases(t, func(body []byte) error { _, err := ParseEncrypt(body); return err }, []errCase{
		{"awsPrincipalArn missing", with(t, b(), "requestMetadata.awsPrincipalArn", del), shared.CodeValidation, "requestMetadata.awsPrincipalArn is required"},
		{"awsPrincipalArn empty", with(t, b(), "requestMetadata.awsPrincipalArn", ""), shared.CodeValidation, "requestMetadata.awsPrincipalArn is required"},
		{"kmsKeyArn missing", with(t, b(), "requestMetadata.kmsKeyArn", del), shared.CodeValidation, "requestMetadata.kmsKeyArn is required"},
		{"plaintext missing", with(t, b(), "plaintext", del), shared.CodeValidation, "plaintext is required"},
		{"plaintext null", with(t, b(), "plaintext", nil), shared.CodeValidation, "plaintext is required"},
		{"plaintext empty", with(t, b(), "plaintext", ""), shared.CodeValidation, "plaintext is required and must not be empty"},
		{"plaintext number", with(t, b(), "plaintext", 12), shared.CodeValidation, "plaintext must be a string"},
		{"plaintext not base64", with(t, b(), "plaintext", "SECRET!!"), shared.CodeValidation, "plaintext is not valid standard base64"},
		{"plaintext URL-safe base64", with(t, b(), "plaintext", "-_8="), shared.CodeValidation, "plaintext is not valid standard base64"},
		{"plaintext unpadded", with(t, b(), "plaintext", "SGVsbG8"), shared.CodeValidation, "plaintext is not valid standard base64"},
		{"plaintext non-zero pad bits", with(t, b(), "plaintext", "QR=="), shared.CodeValidation, "plaintext is not valid standard base64"},
		{"plaintext with line break", with(t, b(), "plaintext", "SGVs\nbG8gV29ybGQh"), shared.CodeValidation, "plaintext must be standard base64 without line breaks"},
		{"plaintext with CR", with(t, b(), "plaintext", "SGVs\rbG8gV29ybGQh"), shared.CodeValidation, "without line breaks"},
		{"plaintext with space", with(t, b(), "plaintext", "SGVs bG8gV29ybGQh"), shared.CodeValidation, "plaintext is not valid standard base64"},
		{"plaintext too large", with(t, b(), "plaintext", b64(MaxPlaintextBytes+1)), shared.CodeUnsupportedOperation, "plaintext exceeds the supported maximum of 8192 bytes"},
		{"encryptionAlgorithm missing", with(t, b(), "encryptionAlgorithm", del), shared.CodeValidation, "encryptionAlgorithm is required"},
		{"encryptionAlgorithm other", with(t, b(), "encryptionAlgorithm", "AES_CBC"), shared.CodeValidation, "encryptionAlgorithm must be AES_GCM"},
		{"encryptionAlgorithm lower case", with(t, b(), "encryptionAlgorithm", "aes_gcm"), shared.CodeValidation, "encryptionAlgorithm must be AES_GCM"},
		{"encryptionAlgorithm v0 name", with(t, b(), "encryptionAlgorithm", "AES_GCM_256"), shared.CodeValidation, "encryptionAlgorithm must be AES_GCM"},
		{"encryptionAlgorithm array", with(t, b(), "encryptionAlgorithm", []string{"AES_GCM"}), shared.CodeValidation, "encryptionAlgorithm must be a string"},
		{"AAD not base64", with(t, b(), "additionalAuthenticatedData", "%%%%"), shared.CodeValidation, "additionalAuthenticatedData is not valid standard base64"},
		{"AAD number", with(t, b(), "additionalAuthenticatedData", 1), shared.CodeValidation, "additionalAuthenticatedData must be a string"},
		{"AAD too large", with(t, b(), "additionalAuthenticatedData", b64(MaxAADBytes+1)), shared.CodeUnsupportedOperation, "additionalAuthenticatedData exceeds the supported maximum of 16384 bytes"},
		{"CDIV algorithm other", with(t, b(), "ciphertextDataIntegrityValueAlgorithm", "SHA_512"), shared.CodeValidation, "ciphertextDataIntegrityValueAlgorithm must be SHA_256"},
		{"CDIV algorithm empty", with(t, b(), "ciphertextDataIntegrityValueAlgorithm", ""), shared.CodeValidation, "ciphertextDataIntegrityValueAlgorithm must be SHA_256"},
		{"CDIV algorithm lower case", with(t, b(), "ciphertextDataIntegrityValueAlgorithm", "sha_256"), shared.CodeValidation, "ciphertextDataIntegrityValueAlgorithm must be SHA_256"},
		{"CDIV algorithm bool", with(t, b(), "ciphertextDataIntegrityValueAlgorithm", true), shared.CodeValidation, "ciphertextDataIntegrityValueAlgorithm must be a string"},
		{"duplicate plaintext", []byte(`{"plaintext":"QQ==","plaintext":"Qg=="}`), shared.CodeValidation, `duplicate member "plaintext"`},
	})
}

func TestParseDecrypt(t *testing.T) {
	t.Parallel()
	r, err := ParseDecrypt(mustJSON(t, decryptBody()))
	if err != nil {
		t.Fatal(err)
	}
	if r.RequestMetadata.KMSOperation != "Decrypt" || r.EncryptionAlgorithm != AlgorithmAESGCM ||
		!bytes.Equal(r.AdditionalAuthenticatedData, []byte("project=nile,department=marketing")) ||
		!bytes.Equal(r.CiphertextMetadata, []byte("key_version=1")) ||
		len(r.Ciphertext) != 12 || len(r.InitializationVector) != 12 || len(r.AuthenticationTag) != 16 {
		t.Errorf("ParseDecrypt = %+v", r)
	}
}

func TestParseDecryptAccepts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"16-byte IV (allowed by the specification)", with(t, decryptBody(), "initializationVector", b64(16))},
		{"no AAD, no metadata", with(t, decryptBody(), "additionalAuthenticatedData", del)},
		{"null ciphertextMetadata", with(t, decryptBody(), "ciphertextMetadata", nil)},
		{"ciphertextMetadata at 20 bytes", with(t, decryptBody(), "ciphertextMetadata", b64(MaxCiphertextMetadataBytes))},
		{"ciphertext at maximum", with(t, decryptBody(), "ciphertext", b64(MaxCiphertextBytes))},
		{"AAD at maximum", with(t, decryptBody(), "additionalAuthenticatedData", b64(MaxAADBytes))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseDecrypt(tc.body); err != nil {
				t.Fatalf("ParseDecrypt: %v", err)
			}
		})
	}
}

func TestParseDecryptErrors(t *testing.T) {
	t.Parallel()
	b := decryptBody
	runErrCases(t, func(body []byte) error { _, err := ParseDecrypt(body); return err }, []errCase{
		{"awsPrincipalArn missing", with(t, b(), "requestMetadata.awsPrincipalArn", del), shared.CodeValidation, "requestMetadata.awsPrincipalArn is required"},
		{"kmsKeyArn missing", with(t, b(), "requestMetadata.kmsKeyArn", del), shared.CodeValidation, "requestMetadata.kmsKeyArn is required"},
		{"kmsKeyArn empty", with(t, b(), "requestMetadata.kmsKeyArn", ""), shared.CodeValidation, "requestMetadata.kmsKeyArn is required"},
		{"encryptionAlgorithm missing", with(t, b(), "encryptionAlgorithm", del), shared.CodeValidation, "encryptionAlgorithm is required"},
		{"encryptionAlgorithm other", with(t, b(), "encryptionAlgorithm", "RSAES_OAEP_SHA_256"), shared.CodeValidation, "encryptionAlgorithm must be AES_GCM"},
		{"ciphertext missing", with(t, b(), "ciphertext", del), shared.CodeValidation, "ciphertext is required"},
		{"ciphertext empty", with(t, b(), "ciphertext", ""), shared.CodeValidation, "ciphertext is required and must not be empty"},
		{"ciphertext not base64", with(t, b(), "ciphertext", "g h"), shared.CodeValidation, "ciphertext is not valid standard base64"},
		{"ciphertext too large", with(t, b(), "ciphertext", b64(MaxCiphertextBytes+1)), shared.CodeUnsupportedOperation, "ciphertext exceeds the supported maximum of 8192 bytes"},
		{"IV missing", with(t, b(), "initializationVector", del), shared.CodeValidation, "initializationVector is required"},
		{"IV empty", with(t, b(), "initializationVector", ""), shared.CodeValidation, "initializationVector is required"},
		{"IV 11 bytes", with(t, b(), "initializationVector", b64(11)), shared.CodeValidation, "initializationVector must be 12 or 16 bytes"},
		{"IV 13 bytes", with(t, b(), "initializationVector", b64(13)), shared.CodeValidation, "initializationVector must be 12 or 16 bytes"},
		{"IV 32 bytes", with(t, b(), "initializationVector", b64(32)), shared.CodeValidation, "initializationVector must be 12 or 16 bytes"},
		{"IV not base64", with(t, b(), "initializationVector", "HMrlRw85cAJUd5A"), shared.CodeValidation, "initializationVector is not valid standard base64"},
		{"tag missing", with(t, b(), "authenticationTag", del), shared.CodeValidation, "authenticationTag is required"},
		{"tag 15 bytes", with(t, b(), "authenticationTag", b64(15)), shared.CodeValidation, "authenticationTag must be 16 bytes"},
		{"tag 12 bytes", with(t, b(), "authenticationTag", b64(12)), shared.CodeValidation, "authenticationTag must be 16 bytes"},
		{"tag 17 bytes", with(t, b(), "authenticationTag", b64(17)), shared.CodeValidation, "authenticationTag must be 16 bytes"},
		{"tag number", with(t, b(), "authenticationTag", 16), shared.CodeValidation, "authenticationTag must be a string"},
		{"AAD not base64", with(t, b(), "additionalAuthenticatedData", "cHJvamVjdD1"), shared.CodeValidation, "additionalAuthenticatedData is not valid standard base64"},
		{"AAD too large", with(t, b(), "additionalAuthenticatedData", b64(MaxAADBytes+1)), shared.CodeUnsupportedOperation, "additionalAuthenticatedData exceeds"},
		{"ciphertextMetadata 21 bytes", with(t, b(), "ciphertextMetadata", b64(MaxCiphertextMetadataBytes+1)), shared.CodeValidation, "ciphertextMetadata must not exceed 20 bytes"},
		{"ciphertextMetadata not base64", with(t, b(), "ciphertextMetadata", "a2V5X3ZlcnNpb249MQ="), shared.CodeValidation, "ciphertextMetadata is not valid standard base64"},
	})
}

func TestParseMetadata(t *testing.T) {
	t.Parallel()
	// kmsKeyArn is absent when KMS calls GetKeyMetadata during CreateKey.
	createKey := with(t, metadataBody(), "requestMetadata.kmsKeyArn", del)
	r, err := ParseMetadata(createKey)
	if err != nil {
		t.Fatalf("ParseMetadata without kmsKeyArn: %v", err)
	}
	if r.RequestMetadata.KMSOperation != "DescribeKey" || r.RequestMetadata.KMSKeyArn != "" {
		t.Errorf("ParseMetadata = %+v", r)
	}

	b := metadataBody
	runErrCases(t, func(body []byte) error { _, err := ParseMetadata(body); return err }, []errCase{
		{"awsPrincipalArn missing", with(t, b(), "requestMetadata.awsPrincipalArn", del), shared.CodeValidation, "requestMetadata.awsPrincipalArn is required"},
		{"kmsOperation missing", with(t, b(), "requestMetadata.kmsOperation", del), shared.CodeValidation, "requestMetadata.kmsOperation is required"},
		{"kmsRequestId missing", with(t, b(), "requestMetadata.kmsRequestId", del), shared.CodeValidation, "requestMetadata.kmsRequestId is required"},
		{"empty requestMetadata (test client)", []byte(`{"requestMetadata":{}}`), shared.CodeValidation, "requestMetadata.awsPrincipalArn is required"},
		{"kmsKeyArn wrong type", with(t, b(), "requestMetadata.kmsKeyArn", 1), shared.CodeValidation, "requestMetadata.kmsKeyArn must be a string"},
	})
}

func TestParseHealth(t *testing.T) {
	t.Parallel()
	// The specification's example, with the comma it is missing.
	r, err := ParseHealth([]byte(`{"requestMetadata": {"kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
		"kmsOperation": "CreateCustomKeyStore"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.RequestMetadata.KMSOperation != "CreateCustomKeyStore" || r.RequestMetadata.KMSRequestID != "4112f4d6-db54-4af4-ae30-c55a22a8dfae" {
		t.Errorf("ParseHealth = %+v", r)
	}

	b := healthBody
	runErrCases(t, func(body []byte) error { _, err := ParseHealth(body); return err }, []errCase{
		{"no requestMetadata (test client)", []byte(`{}`), shared.CodeValidation, "requestMetadata is required"},
		{"empty requestMetadata (test client)", []byte(`{"requestMetadata":{}}`), shared.CodeValidation, "requestMetadata.kmsOperation is required"},
		{"kmsRequestId missing", with(t, b(), "requestMetadata.kmsRequestId", del), shared.CodeValidation, "requestMetadata.kmsRequestId is required"},
		{"kmsOperation missing", with(t, b(), "requestMetadata.kmsOperation", del), shared.CodeValidation, "requestMetadata.kmsOperation is required"},
	})
}

// TestSpecExamples parses the request examples of the specification. Three of
// them are not valid JSON as published (a comma is missing); they are fixed
// here and the unfixed ones must be rejected, not guessed at.
func TestSpecExamples(t *testing.T) {
	t.Parallel()
	metadata := `{"requestMetadata": {"awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
		"kmsKeyArn": "arn:aws:kms:us-east-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
		"kmsOperation": "DescribeKey", "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae", "kmsViaService": "ebs"}}`
	decrypt := `{"requestMetadata": {"awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
		"kmsKeyArn": "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab",
		"kmsOperation": "Decrypt", "kmsRequestId": "5112f4d6-db54-4af4-ae30-c55a22a8dfae", "kmsViaService": "ebs"},
		"additionalAuthenticatedData": "cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n", "encryptionAlgorithm": "AES_GCM",
		"ciphertext": "ghxkK1txeDNn3q8Y", "ciphertextMetadata": "a2V5X3ZlcnNpb249MQ=="
		"initializationVector": "HMrlRw85cAJUd5Ax", "authenticationTag": "vBxN2ncH1oEkR8WVXpmyYQ=="}`
	encrypt := `{"requestMetadata": {"awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
		"kmsKeyArn": "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab",
		"kmsOperation": "Encrypt", "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae", "kmsViaService": "ebs"},
		"additionalAuthenticatedData": "cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n", "plaintext": "SGVsbG8gV29ybGQh",
		"encryptionAlgorithm": "AES_GCM", "ciphertextDataIntegrityValueAlgorithm": "SHA_256"}`

	if _, err := ParseEncrypt([]byte(encrypt)); err != nil {
		t.Errorf("encrypt example: %v", err)
	}
	for name, tc := range map[string]struct {
		text, fixAfter string
		parse          parseFunc
	}{
		"metadata": {metadata, `1234567890ab"`, parsers["metadata"]},
		"decrypt":  {decrypt, `"a2V5X3ZlcnNpb249MQ=="`, parsers["decrypt"]},
	} {
		checkErr(t, tc.parse([]byte(tc.text)), shared.CodeValidation, "not valid JSON")
		fixed := strings.Replace(tc.text, tc.fixAfter, tc.fixAfter+",", 1)
		if err := tc.parse([]byte(fixed)); err != nil {
			t.Errorf("%s example (fixed): %v", name, err)
		}
	}
}

// TestLargestRequestFits checks MaxBodyBytes holds the largest valid request:
// maximal plaintext and AAD, 2048-character ARNs (the specification's
// minimum), long optional metadata and room to spare.
func TestLargestRequestFits(t *testing.T) {
	t.Parallel()
	arn := "arn:aws:iam::123456789012:role/" + strings.Repeat("r", 2048-31)
	md := RequestMetadata{
		AWSPrincipalArn: arn, KMSKeyArn: arn, KMSOperation: "GenerateDataKeyWithoutPlaintext",
		KMSRequestID: strings.Repeat("f", 256), KMSViaService: strings.Repeat("s", 256),
		AWSSourceVpc: strings.Repeat("v", 256), AWSSourceVpce: strings.Repeat("e", 256),
	}
	enc := mustJSON(t, EncryptRequest{
		RequestMetadata: md, Plaintext: bytes.Repeat([]byte{1}, MaxPlaintextBytes),
		EncryptionAlgorithm: AlgorithmAESGCM, AdditionalAuthenticatedData: bytes.Repeat([]byte{2}, MaxAADBytes),
		CiphertextDataIntegrityValueAlgorithm: CDIVAlgorithmSHA256,
	})
	dec := mustJSON(t, DecryptRequest{
		RequestMetadata: md, EncryptionAlgorithm: AlgorithmAESGCM,
		Ciphertext: bytes.Repeat([]byte{1}, MaxCiphertextBytes), InitializationVector: make([]byte, IVLongBytes),
		AuthenticationTag: make([]byte, TagBytes), AdditionalAuthenticatedData: bytes.Repeat([]byte{2}, MaxAADBytes),
		CiphertextMetadata: make([]byte, MaxCiphertextMetadataBytes),
	})
	for name, b := range map[string][]byte{"encrypt": enc, "decrypt": dec} {
		if spare := MaxBodyBytes - len(b); spare < 16<<10 {
			t.Errorf("%s: largest request is %d bytes, leaving %d of MaxBodyBytes spare, want >= 16 KiB", name, len(b), spare)
		}
		if err := parsers[name](b); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestRoundTrip: a parsed request marshals (with the struct tags) back to a
// body that parses to the same request, so the types can be sent by clients.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	e, err := ParseEncrypt(mustJSON(t, encryptBody()))
	if err != nil {
		t.Fatal(err)
	}
	e2, err := ParseEncrypt(mustJSON(t, e))
	if err != nil {
		t.Fatal(err)
	}
	if !encryptEqual(e, e2) {
		t.Errorf("encrypt round trip: %+v != %+v", e, e2)
	}
	d, err := ParseDecrypt(mustJSON(t, decryptBody()))
	if err != nil {
		t.Fatal(err)
	}
	d2, err := ParseDecrypt(mustJSON(t, d))
	if err != nil {
		t.Fatal(err)
	}
	if !decryptEqual(d, d2) {
		t.Errorf("decrypt round trip: %+v != %+v", d, d2)
	}
}

func TestValidateDirect(t *testing.T) {
	t.Parallel()
	var e EncryptRequest
	checkErr(t, e.Validate(), shared.CodeValidation, "requestMetadata.awsPrincipalArn is required")
	var d DecryptRequest
	checkErr(t, d.Validate(), shared.CodeValidation, "requestMetadata.awsPrincipalArn is required")
	var m MetadataRequest
	checkErr(t, m.Validate(), shared.CodeValidation, "requestMetadata.awsPrincipalArn is required")
	var h HealthRequest
	checkErr(t, h.Validate(), shared.CodeValidation, "requestMetadata.kmsOperation is required")
	if !errors.Is(e.Validate(), shared.ErrValidation) {
		t.Error("errors.Is(err, shared.ErrValidation) = false")
	}
}

func encryptEqual(a, b *EncryptRequest) bool {
	return a.RequestMetadata == b.RequestMetadata && bytes.Equal(a.Plaintext, b.Plaintext) &&
		a.EncryptionAlgorithm == b.EncryptionAlgorithm &&
		bytes.Equal(a.AdditionalAuthenticatedData, b.AdditionalAuthenticatedData) &&
		a.CiphertextDataIntegrityValueAlgorithm == b.CiphertextDataIntegrityValueAlgorithm
}

func decryptEqual(a, b *DecryptRequest) bool {
	return a.RequestMetadata == b.RequestMetadata && a.EncryptionAlgorithm == b.EncryptionAlgorithm &&
		bytes.Equal(a.Ciphertext, b.Ciphertext) && bytes.Equal(a.InitializationVector, b.InitializationVector) &&
		bytes.Equal(a.AuthenticationTag, b.AuthenticationTag) &&
		bytes.Equal(a.AdditionalAuthenticatedData, b.AdditionalAuthenticatedData) &&
		bytes.Equal(a.CiphertextMetadata, b.CiphertextMetadata)
}

// go test ./shared/api/xks -run '^$' -bench Parse -benchmem
func BenchmarkParseEncrypt(b *testing.B) {
	body := with(b, encryptBody(), "plaintext", b64(1024))
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := ParseEncrypt(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseDecrypt(b *testing.B) {
	body := with(b, decryptBody(), "ciphertext", b64(1024))
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := ParseDecrypt(body); err != nil {
			b.Fatal(err)
		}
	}
}
