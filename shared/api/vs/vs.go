// Package vs is the wire contract of the volume-secret API, compatible with
// the original Sovereign Keys service: JSON bodies, standard base64 for every
// binary field, errors as {"message": "..."}.
package vs

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/sovkeys/sovkeys/shared"
)

// Limits.
const (
	// MaxBodyBytes bounds a request body: an RSA-4096 SubjectPublicKeyInfo is
	// ~550 bytes, an encrypted secret < 200; base64 and JSON add a third.
	MaxBodyBytes = 16 << 10
	// MinRSABits is the smallest caller wrapping key accepted.
	MinRSABits = 2048
	// MaxRSABits bounds the caller wrapping key (and the work it causes).
	MaxRSABits = 8192
	// MaxEncryptedSecretBytes bounds an encrypted_secret blob.
	MaxEncryptedSecretBytes = 1024
	// MaxIDLen bounds instance ids and volume uuids.
	MaxIDLen = 128
)

// GenerateRequest is the body of POST /v1/encryption/{InstanceId}/generate-secret.
type GenerateRequest struct {
	RSAWrappingKey []byte `json:"rsa_wrapping_key"`
	VolumeUUID     string `json:"volume_uuid"`
}

// GenerateResponse answers generate-secret.
type GenerateResponse struct {
	EncryptedSecret          []byte `json:"encrypted_secret"`
	EncryptedSecretSignature []byte `json:"encrypted_secret_signature"`
	WrappedSecret            []byte `json:"wrapped_secret"`
	WrappedSecretSignature   []byte `json:"wrapped_secret_signature"`
}

// DecryptRequest is the body of POST /v1/encryption/{InstanceId}/decrypt-secret.
type DecryptRequest struct {
	EncryptedSecret []byte `json:"encrypted_secret"`
	RSAWrappingKey  []byte `json:"rsa_wrapping_key"`
	VolumeUUID      string `json:"volume_uuid"`
}

// DecryptResponse answers decrypt-secret.
type DecryptResponse struct {
	WrappedSecret          []byte `json:"wrapped_secret"`
	WrappedSecretSignature []byte `json:"wrapped_secret_signature"`
}

// ConvertRequest is the body of POST /v1/encryption/{InstanceId}/convert-secret.
type ConvertRequest struct {
	EncryptedSecret  []byte `json:"encrypted_secret"`
	VolumeUUID       string `json:"volume_uuid"`
	SourceInstanceID string `json:"source_instance_id"`
}

// ConvertResponse answers convert-secret.
type ConvertResponse struct {
	EncryptedSecret          []byte `json:"encrypted_secret"`
	EncryptedSecretSignature []byte `json:"encrypted_secret_signature"`
}

// PublicKeyResponse answers GET /v1/public-signing-key.
type PublicKeyResponse struct {
	PublicKey []byte `json:"public_key"`
}

// ErrorResponse is every error body.
type ErrorResponse struct {
	Message string `json:"message"`
}

func invalid(format string, args ...any) error {
	return shared.NewError(shared.CodeValidation, "invalid request: "+format, args...)
}

// decodeStrict decodes exactly one JSON object with no unknown fields: the
// original service's clients send exactly these fields.
func decodeStrict(body []byte, v any) error {
	if len(body) > MaxBodyBytes {
		return invalid("body exceeds %d bytes", MaxBodyBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var ute *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &ute):
			return invalid("field %q has the wrong type (binary fields are standard base64 strings)", ute.Field)
		case errors.As(err, &se):
			return invalid("malformed JSON at byte %d", se.Offset)
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return invalid("%s", strings.TrimPrefix(err.Error(), "json: "))
		case strings.Contains(err.Error(), "illegal base64"):
			return invalid("a binary field is not valid standard base64")
		}
		return invalid("malformed JSON body")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("trailing data after the JSON object")
	}
	return nil
}

// ValidID reports whether s can be an instance id or volume uuid: 1-128
// characters of [A-Za-z0-9._:-].
func ValidID(s string) bool {
	if s == "" || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// ParseRSAKey parses a DER SubjectPublicKeyInfo holding an RSA key of
// MinRSABits..MaxRSABits bits.
func ParseRSAKey(der []byte) (*rsa.PublicKey, error) {
	if len(der) == 0 {
		return nil, invalid("rsa_wrapping_key is required")
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, invalid("rsa_wrapping_key is not a DER SubjectPublicKeyInfo")
	}
	rk, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, invalid("rsa_wrapping_key is not an RSA key")
	}
	if bits := rk.N.BitLen(); bits < MinRSABits || bits > MaxRSABits {
		return nil, invalid("rsa_wrapping_key has %d bits; %d to %d are accepted", bits, MinRSABits, MaxRSABits)
	}
	return rk, nil
}

func checkVolume(v string) error {
	if !ValidID(v) {
		return invalid("volume_uuid must be 1-%d characters of [A-Za-z0-9._:-]", MaxIDLen)
	}
	return nil
}

func checkSecret(b []byte) error {
	if len(b) == 0 || len(b) > MaxEncryptedSecretBytes {
		return invalid("encrypted_secret must be 1-%d bytes", MaxEncryptedSecretBytes)
	}
	return nil
}

// ParseGenerate decodes and validates a generate-secret body.
func ParseGenerate(body []byte) (*GenerateRequest, *rsa.PublicKey, error) {
	var r GenerateRequest
	if err := decodeStrict(body, &r); err != nil {
		return nil, nil, err
	}
	if err := checkVolume(r.VolumeUUID); err != nil {
		return nil, nil, err
	}
	pub, err := ParseRSAKey(r.RSAWrappingKey)
	if err != nil {
		return nil, nil, err
	}
	return &r, pub, nil
}

// ParseDecrypt decodes and validates a decrypt-secret body.
func ParseDecrypt(body []byte) (*DecryptRequest, *rsa.PublicKey, error) {
	var r DecryptRequest
	if err := decodeStrict(body, &r); err != nil {
		return nil, nil, err
	}
	if err := checkVolume(r.VolumeUUID); err != nil {
		return nil, nil, err
	}
	if err := checkSecret(r.EncryptedSecret); err != nil {
		return nil, nil, err
	}
	pub, err := ParseRSAKey(r.RSAWrappingKey)
	if err != nil {
		return nil, nil, err
	}
	return &r, pub, nil
}

// ParseConvert decodes and validates a convert-secret body.
func ParseConvert(body []byte) (*ConvertRequest, error) {
	var r ConvertRequest
	if err := decodeStrict(body, &r); err != nil {
		return nil, err
	}
	if err := checkVolume(r.VolumeUUID); err != nil {
		return nil, err
	}
	if err := checkSecret(r.EncryptedSecret); err != nil {
		return nil, err
	}
	if !ValidID(r.SourceInstanceID) {
		return nil, invalid("source_instance_id must be 1-%d characters of [A-Za-z0-9._:-]", MaxIDLen)
	}
	return &r, nil
}

// Op is one volume-secret operation, the last path segment.
type Op string

// Operations.
const (
	OpGenerate Op = "generate-secret"
	OpDecrypt  Op = "decrypt-secret"
	OpConvert  Op = "convert-secret"
)

// API maps an operation to its mesh API name.
func (o Op) API() shared.API {
	switch o {
	case OpGenerate:
		return shared.APIVSGenerate
	case OpDecrypt:
		return shared.APIVSDecrypt
	case OpConvert:
		return shared.APIVSConvert
	}
	return ""
}

// ParsePath parses "/v1/encryption/{InstanceId}/{op}".
func ParsePath(path string) (instanceID string, op Op, err error) {
	rest, ok := strings.CutPrefix(path, "/v1/encryption/")
	if !ok {
		return "", "", shared.NewError(shared.CodeInvalidURIPath, "no such resource")
	}
	id, opStr, ok := strings.Cut(rest, "/")
	op = Op(opStr)
	if !ok || op.API() == "" {
		return "", "", shared.NewError(shared.CodeInvalidURIPath, "no such resource")
	}
	if !ValidID(id) {
		return "", "", invalid("instance id must be 1-%d characters of [A-Za-z0-9._:-]", MaxIDLen)
	}
	return id, op, nil
}

// Context strings used in audit events.
func (o Op) String() string { return string(o) }

var _ fmt.Stringer = Op("")
