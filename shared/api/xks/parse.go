package xks

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sovkeys/sovkeys/shared"
)

// Parsing rules, shared by every Parse function:
//
//   - The body is at most MaxBodyBytes of valid UTF-8 holding exactly one JSON
//     object; anything after it is rejected.
//   - Member names match exactly (encoding/json alone would match them
//     case-insensitively). A name repeated in the top-level object or in
//     requestMetadata is rejected rather than resolved by "last one wins", so
//     every component that reads the body agrees on what it says.
//   - Unknown members are ignored, at the top level and in requestMetadata.
//     The specification's Appendix B says KMS may add requestMetadata fields
//     (SourceIdentity, attestation values, tags) at any time, and AWS cannot
//     coordinate that with every proxy: rejecting unknown members would turn
//     a KMS release into an outage. The price is that a misspelt optional
//     member is silently ignored; KMS never misspells.
//   - A member whose value is null counts as absent.
//   - Binary members are standard base64 with padding (RFC 4648 section 4),
//     decoded strictly: no URL-safe alphabet, no line breaks, no non-zero
//     padding bits.
//   - Failures are *shared.Error: CodeValidation (ValidationException), or
//     CodeUnsupportedOperation (UnsupportedOperationException) for a body or
//     value larger than we support.

// ParseEncrypt parses and validates the body of an encrypt request.
func ParseEncrypt(body []byte) (*EncryptRequest, error) {
	o, err := parseBody(body)
	if err != nil {
		return nil, err
	}
	md, err := o.requestMetadata()
	if err != nil {
		return nil, err
	}
	r := &EncryptRequest{RequestMetadata: md}
	if r.Plaintext, err = o.bytes("plaintext"); err != nil {
		return nil, err
	}
	if r.EncryptionAlgorithm, _, err = o.str("encryptionAlgorithm"); err != nil {
		return nil, err
	}
	if r.AdditionalAuthenticatedData, err = o.bytes("additionalAuthenticatedData"); err != nil {
		return nil, err
	}
	alg, present, err := o.str("ciphertextDataIntegrityValueAlgorithm")
	if err != nil {
		return nil, err
	}
	if present && alg == "" {
		return nil, invalidCDIVAlgorithm()
	}
	r.CiphertextDataIntegrityValueAlgorithm = alg
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// ParseDecrypt parses and validates the body of a decrypt request.
func ParseDecrypt(body []byte) (*DecryptRequest, error) {
	o, err := parseBody(body)
	if err != nil {
		return nil, err
	}
	md, err := o.requestMetadata()
	if err != nil {
		return nil, err
	}
	r := &DecryptRequest{RequestMetadata: md}
	if r.EncryptionAlgorithm, _, err = o.str("encryptionAlgorithm"); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{
		{"ciphertext", &r.Ciphertext},
		{"initializationVector", &r.InitializationVector},
		{"authenticationTag", &r.AuthenticationTag},
		{"additionalAuthenticatedData", &r.AdditionalAuthenticatedData},
		{"ciphertextMetadata", &r.CiphertextMetadata},
	} {
		if *f.dst, err = o.bytes(f.name); err != nil {
			return nil, err
		}
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// ParseMetadata parses and validates the body of a GetKeyMetadata request.
func ParseMetadata(body []byte) (*MetadataRequest, error) {
	o, err := parseBody(body)
	if err != nil {
		return nil, err
	}
	md, err := o.requestMetadata()
	if err != nil {
		return nil, err
	}
	r := &MetadataRequest{RequestMetadata: md}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// ParseHealth parses and validates the body of a GetHealthStatus request.
func ParseHealth(body []byte) (*HealthRequest, error) {
	o, err := parseBody(body)
	if err != nil {
		return nil, err
	}
	md, err := o.requestMetadata()
	if err != nil {
		return nil, err
	}
	r := &HealthRequest{RequestMetadata: md}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// Validate checks the fields op requires: awsPrincipalArn, kmsOperation and
// kmsRequestId for every key operation, plus kmsKeyArn for encrypt and
// decrypt; only kmsOperation and kmsRequestId for health. kmsKeyArn is
// optional for metadata (KMS omits it during CreateKey). Values are not
// inspected: kmsRequestId is opaque and any kmsOperation is accepted.
func (m *RequestMetadata) Validate(op Op) error {
	if op != OpHealth && m.AWSPrincipalArn == "" {
		return required("requestMetadata.awsPrincipalArn")
	}
	if (op == OpEncrypt || op == OpDecrypt) && m.KMSKeyArn == "" {
		return required("requestMetadata.kmsKeyArn")
	}
	if m.KMSOperation == "" {
		return required("requestMetadata.kmsOperation")
	}
	if m.KMSRequestID == "" {
		return required("requestMetadata.kmsRequestId")
	}
	return nil
}

// Validate checks r as ParseEncrypt does, for a request that did not come
// through it (for example one built by a client).
func (r *EncryptRequest) Validate() error {
	if err := r.RequestMetadata.Validate(OpEncrypt); err != nil {
		return err
	}
	if err := validateAlgorithm(r.EncryptionAlgorithm); err != nil {
		return err
	}
	if len(r.Plaintext) == 0 {
		return nonEmpty("plaintext")
	}
	if len(r.Plaintext) > MaxPlaintextBytes {
		return tooLarge("plaintext", MaxPlaintextBytes)
	}
	if len(r.AdditionalAuthenticatedData) > MaxAADBytes {
		return tooLarge("additionalAuthenticatedData", MaxAADBytes)
	}
	if a := r.CiphertextDataIntegrityValueAlgorithm; a != "" && a != CDIVAlgorithmSHA256 {
		return invalidCDIVAlgorithm()
	}
	return nil
}

// Validate checks r as ParseDecrypt does.
func (r *DecryptRequest) Validate() error {
	if err := r.RequestMetadata.Validate(OpDecrypt); err != nil {
		return err
	}
	if err := validateAlgorithm(r.EncryptionAlgorithm); err != nil {
		return err
	}
	if len(r.Ciphertext) == 0 {
		return nonEmpty("ciphertext")
	}
	if len(r.Ciphertext) > MaxCiphertextBytes {
		return tooLarge("ciphertext", MaxCiphertextBytes)
	}
	switch len(r.InitializationVector) {
	case 0:
		return required("initializationVector")
	case IVBytes, IVLongBytes:
	default:
		return invalid("initializationVector must be %d or %d bytes", IVBytes, IVLongBytes)
	}
	switch len(r.AuthenticationTag) {
	case 0:
		return required("authenticationTag")
	case TagBytes:
	default:
		return invalid("authenticationTag must be %d bytes", TagBytes)
	}
	if len(r.AdditionalAuthenticatedData) > MaxAADBytes {
		return tooLarge("additionalAuthenticatedData", MaxAADBytes)
	}
	if len(r.CiphertextMetadata) > MaxCiphertextMetadataBytes {
		return invalid("ciphertextMetadata must not exceed %d bytes", MaxCiphertextMetadataBytes)
	}
	return nil
}

// Validate checks r as ParseMetadata does.
func (r *MetadataRequest) Validate() error { return r.RequestMetadata.Validate(OpMetadata) }

// Validate checks r as ParseHealth does.
func (r *HealthRequest) Validate() error { return r.RequestMetadata.Validate(OpHealth) }

// validateAlgorithm rejects anything but AES_GCM with ValidationException:
// the specification defines the field as "MUST be AES_GCM", so another value
// is an invalid input parameter, not an operation we merely lack.
func validateAlgorithm(alg string) error {
	switch alg {
	case AlgorithmAESGCM:
		return nil
	case "":
		return required("encryptionAlgorithm")
	default:
		return invalid("encryptionAlgorithm must be %s", AlgorithmAESGCM)
	}
}

// object is one JSON object decoded a single level deep: exact member names
// to raw values.
type object struct {
	path    string // "" for the body, else the member path, e.g. "requestMetadata"
	members map[string]json.RawMessage
}

func parseBody(body []byte) (object, error) {
	switch {
	case len(body) == 0:
		return object{}, invalid("request body is empty")
	case len(body) > MaxBodyBytes:
		return object{}, shared.NewError(shared.CodeUnsupportedOperation,
			"xks: request body exceeds the supported maximum of %d bytes", MaxBodyBytes)
	case !utf8.Valid(body):
		return object{}, invalid("request body is not valid UTF-8")
	}
	return decodeObject(body, "")
}

// decodeObject decodes data, which must be one JSON object and nothing else.
// The common case (valid JSON, member names without escapes, no duplicate)
// takes a single pass (decodeObjectFast); anything else goes through the
// token decoder (decodeObjectSlow), which either agrees or names the fault.
func decodeObject(data []byte, path string) (object, error) {
	if o, ok := decodeObjectFast(data, path); ok {
		return o, nil
	}
	return decodeObjectSlow(data, path)
}

// decodeObjectFast splits a valid JSON object into its members without the
// token decoder's allocations. It reports false, leaving the verdict to
// decodeObjectSlow, for invalid JSON, anything but an object, a member name
// with an escape or invalid UTF-8 (so names compare exactly as the slow path
// compares them) and a repeated name.
func decodeObjectFast(data []byte, path string) (object, bool) {
	if !json.Valid(data) {
		return object{}, false
	}
	// From here on data is one valid JSON value: the scan below need not
	// check syntax, only find where each member starts and ends.
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return object{}, false
	}
	o := object{path: path, members: make(map[string]json.RawMessage, 8)}
	for i = skipSpace(data, i+1); data[i] != '}'; i = skipSpace(data, i) {
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
		end := stringEnd(data, i)
		name := data[i+1 : end-1]
		if bytes.IndexByte(name, '\\') >= 0 || !utf8.Valid(name) {
			return object{}, false
		}
		i = skipSpace(data, skipSpace(data, end)+1) // past the colon
		vend := valueEnd(data, i)
		if _, dup := o.members[string(name)]; dup {
			return object{}, false
		}
		o.members[string(name)] = data[i:vend:vend]
		i = vend
	}
	return o, true
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index after the closing quote of the valid JSON
// string starting at data[i].
func stringEnd(data []byte, i int) int {
	for j := i + 1; ; j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
}

// valueEnd returns the index after the valid JSON value starting at data[i].
func valueEnd(data []byte, i int) int {
	switch data[i] {
	case '"':
		return stringEnd(data, i)
	case '{', '[':
		depth := 0
		for j := i; ; j++ {
			switch data[j] {
			case '"':
				j = stringEnd(data, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
	}
	j := i // a number, true, false or null
	for j < len(data) {
		switch data[j] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return j
		}
		j++
	}
	return j
}

// decodeObjectSlow is decodeObject through the token decoder: every
// malformed input is named here.
func decodeObjectSlow(data []byte, path string) (object, error) {
	what := "request body"
	if path != "" {
		what = path
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return object{}, syntaxError(what, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return object{}, invalid("%s must be a JSON object", what)
	}
	o := object{path: path, members: make(map[string]json.RawMessage)}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return object{}, syntaxError(what, err)
		}
		name, ok := tok.(string)
		if !ok {
			return object{}, invalid("%s is not valid JSON", what)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return object{}, syntaxError(what, err)
		}
		if _, dup := o.members[name]; dup {
			return object{}, invalid("%s has a duplicate member%s", what, memberName(name))
		}
		o.members[name] = raw
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return object{}, syntaxError(what, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return object{}, invalid("%s must hold exactly one JSON object", what)
	}
	return o, nil
}

// syntaxError reports malformed JSON by byte offset only: the decoder's own
// message quotes input characters, which may belong to plaintext.
func syntaxError(what string, err error) error {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return invalid("%s is not valid JSON (syntax error at byte offset %d)", what, se.Offset)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("%s is not valid JSON (unexpected end of input)", what)
	default:
		return invalid("%s is not valid JSON", what)
	}
}

// memberName returns " \"name\"" when name looks like a field name worth
// quoting in an error message, else "": names come from the caller.
func memberName(name string) string {
	if name == "" || len(name) > 64 {
		return ""
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return ""
		}
	}
	return " " + strconv.Quote(name)
}

func (o object) fieldPath(name string) string {
	if o.path == "" {
		return name
	}
	return o.path + "." + name
}

// raw returns the member's raw value, or false when it is absent or null.
func (o object) raw(name string) (json.RawMessage, bool) {
	raw, ok := o.members[name]
	if !ok || string(bytes.TrimSpace(raw)) == "null" {
		return nil, false
	}
	return raw, true
}

// str returns a string member and whether it was present.
func (o object) str(name string) (string, bool, error) {
	raw, ok := o.raw(name)
	if !ok {
		return "", false, nil
	}
	if plain, ok := plainString(raw); ok {
		return string(plain), true, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, invalid("%s must be a string", o.fieldPath(name))
	}
	return s, true, nil
}

// plainString returns the contents of a JSON string without escapes, which
// are its value as is: raw is valid JSON (decodeObject checked it) inside a
// valid UTF-8 body, so it holds no control character and no invalid UTF-8.
func plainString(raw []byte) ([]byte, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, false
	}
	in := raw[1 : len(raw)-1]
	if bytes.IndexByte(in, '\\') >= 0 {
		return nil, false
	}
	return in, true
}

// bytes returns a base64 member decoded: nil when absent, non-nil (possibly
// empty) when present.
func (o object) bytes(name string) ([]byte, error) {
	if raw, ok := o.raw(name); ok {
		if plain, ok := plainString(raw); ok {
			return o.decodeBase64(name, plain)
		}
	}
	s, ok, err := o.str(name)
	if err != nil || !ok {
		return nil, err
	}
	// The decoder skips CR and LF even in strict mode; we do not.
	if strings.ContainsAny(s, "\r\n") {
		return nil, invalid("%s must be standard base64 without line breaks", o.fieldPath(name))
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, invalid("%s is not valid standard base64 (RFC 4648 section 4, padded)", o.fieldPath(name))
	}
	return b, nil
}

// decodeBase64 is the end of bytes for a string without escapes, decoded
// from the body's bytes without a copy to a string first.
func (o object) decodeBase64(name string, enc []byte) ([]byte, error) {
	// The decoder skips CR and LF even in strict mode; we do not.
	if bytes.ContainsAny(enc, "\r\n") {
		return nil, invalid("%s must be standard base64 without line breaks", o.fieldPath(name))
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
	n, err := base64.StdEncoding.Strict().Decode(b, enc)
	if err != nil {
		return nil, invalid("%s is not valid standard base64 (RFC 4648 section 4, padded)", o.fieldPath(name))
	}
	return b[:n], nil
}

// requestMetadata decodes the requestMetadata member, which every request
// must carry. Which of its fields are required is RequestMetadata.Validate's
// business.
func (o object) requestMetadata() (RequestMetadata, error) {
	raw, ok := o.raw("requestMetadata")
	if !ok {
		return RequestMetadata{}, required("requestMetadata")
	}
	m, err := decodeObject(raw, "requestMetadata")
	if err != nil {
		return RequestMetadata{}, err
	}
	var md RequestMetadata
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{"awsPrincipalArn", &md.AWSPrincipalArn},
		{"kmsOperation", &md.KMSOperation},
		{"kmsRequestId", &md.KMSRequestID},
		{"kmsKeyArn", &md.KMSKeyArn},
		{"kmsViaService", &md.KMSViaService},
		{"awsSourceVpc", &md.AWSSourceVpc},
		{"awsSourceVpce", &md.AWSSourceVpce},
	} {
		if *f.dst, _, err = m.str(f.name); err != nil {
			return RequestMetadata{}, err
		}
	}
	return md, nil
}

func invalid(format string, args ...any) error {
	return shared.NewError(shared.CodeValidation, "xks: "+format, args...)
}

func required(field string) error { return invalid("%s is required", field) }

func nonEmpty(field string) error { return invalid("%s is required and must not be empty", field) }

func tooLarge(field string, limit int) error {
	return shared.NewError(shared.CodeUnsupportedOperation,
		"xks: %s exceeds the supported maximum of %d bytes", field, limit)
}

func invalidCDIVAlgorithm() error {
	return invalid("ciphertextDataIntegrityValueAlgorithm must be %s", CDIVAlgorithmSHA256)
}
