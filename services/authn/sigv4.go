package authn

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
)

// SigV4 settings. Only header-based AWS4-HMAC-SHA256 authentication is
// accepted; presigned (query string) requests are rejected.
const (
	// DefaultSigV4Service is the service name KMS puts in the credential scope
	// of every request it sends to an XKS proxy.
	DefaultSigV4Service = "kms-xks-proxy"
	// DefaultMaxSkew is the largest clock difference the XKS spec allows.
	DefaultMaxSkew = 5 * time.Minute

	sigV4Algorithm  = "AWS4-HMAC-SHA256"
	sigV4Terminator = "aws4_request"
	amzDateLayout   = "20060102T150405Z"
	scopeDateLayout = "20060102"
	unsignedPayload = "UNSIGNED-PAYLOAD"

	maxAuthorizationLen = 4096
	maxSignedHeaders    = 64
)

// SigV4Input is an HTTP request as the gateway received it.
type SigV4Input struct {
	Method   string
	RawPath  string // escaped path exactly as sent (r.URL.EscapedPath() / RequestURI path part)
	RawQuery string
	Host     string              // r.Host (the Host header)
	Header   map[string][]string // header names in any case; compared case-insensitively
	Body     []byte
}

// Credential is one SigV4 access key pair of a key store.
type Credential struct{ AccessKeyID, SecretAccessKey string }

// Authorization is a parsed AWS4-HMAC-SHA256 Authorization header.
type Authorization struct {
	AccessKeyID   string
	Date          string // yyyymmdd from the credential scope
	Region        string
	Service       string
	SignedHeaders []string // lowercase, sorted, unique, includes "host"
	Signature     string   // 64 lowercase hex digits
}

// SigV4Verifier checks AWS Signature Version 4 request signatures. Zero fields
// fall back to DefaultSigV4Service, DefaultMaxSkew and time.Now.
type SigV4Verifier struct {
	Service string           // "kms-xks-proxy"
	MaxSkew time.Duration    // 5 * time.Minute
	Now     func() time.Time // injected clock
}

// authFailed returns a caller-safe *shared.Error with CodeAuthenticationFailed.
// Messages may name the access key id, never a secret or a computed signature.
func authFailed(format string, args ...any) error {
	return shared.NewError(shared.CodeAuthenticationFailed, "sovkeys: authentication failed: "+format, args...)
}

// ParseAuthorization parses an AWS4-HMAC-SHA256 Authorization header value and
// checks its syntax, including the XKS access key id format.
func ParseAuthorization(h string) (Authorization, error) {
	a, err := parseAuthorization(h)
	if err != nil {
		return Authorization{}, err
	}
	if err := validAccessKeyID(a.AccessKeyID); err != nil {
		return Authorization{}, err
	}
	return a, nil
}

// parseAuthorization is ParseAuthorization without the access key id format
// check, so AWS's public test vectors (id AKIDEXAMPLE) can run through it.
func parseAuthorization(h string) (Authorization, error) {
	if len(h) > maxAuthorizationLen {
		return Authorization{}, authFailed("authorization header is too long")
	}
	alg, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	if alg != sigV4Algorithm {
		return Authorization{}, authFailed("authorization header must use the %s algorithm", sigV4Algorithm)
	}
	parts := make(map[string]string, 3)
	for _, part := range strings.Split(rest, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		switch _, dup := parts[k]; {
		case !ok:
			return Authorization{}, authFailed("authorization header is malformed")
		case k != "Credential" && k != "SignedHeaders" && k != "Signature":
			return Authorization{}, authFailed("authorization header has an unknown or misspelt component")
		case dup:
			return Authorization{}, authFailed("authorization header repeats the %s component", k)
		}
		parts[k] = val
	}
	if len(parts) != 3 {
		return Authorization{}, authFailed("authorization header needs Credential, SignedHeaders and Signature")
	}

	scope := strings.Split(parts["Credential"], "/")
	if len(scope) != 5 {
		return Authorization{}, authFailed("credential must be <access key id>/<yyyymmdd>/<region>/<service>/%s", sigV4Terminator)
	}
	a := Authorization{AccessKeyID: scope[0], Date: scope[1], Region: scope[2], Service: scope[3],
		SignedHeaders: strings.Split(parts["SignedHeaders"], ";"), Signature: parts["Signature"]}
	if _, err := time.Parse(scopeDateLayout, a.Date); err != nil || len(a.Date) != len(scopeDateLayout) {
		return Authorization{}, authFailed("credential scope date is not yyyymmdd")
	}
	switch {
	case a.AccessKeyID == "":
		return Authorization{}, authFailed("credential has no access key id")
	case !scopeToken(a.Region):
		return Authorization{}, authFailed("credential scope region is empty or malformed")
	case !scopeToken(a.Service):
		return Authorization{}, authFailed("credential scope service is empty or malformed")
	case scope[4] != sigV4Terminator:
		return Authorization{}, authFailed("credential scope must end in %s", sigV4Terminator)
	case len(a.SignedHeaders) > maxSignedHeaders:
		return Authorization{}, authFailed("too many signed headers")
	}
	for i, name := range a.SignedHeaders {
		if !headerToken(name) {
			return Authorization{}, authFailed("signed headers must be lowercase header names separated by ';'")
		}
		if i > 0 && a.SignedHeaders[i-1] >= name {
			return Authorization{}, authFailed("signed headers must be sorted and unique")
		}
	}
	if !slices.Contains(a.SignedHeaders, "host") {
		return Authorization{}, authFailed("signed headers must include host")
	}
	if _, err := hex.DecodeString(a.Signature); err != nil || len(a.Signature) != 2*sha256.Size ||
		strings.ToLower(a.Signature) != a.Signature {
		return Authorization{}, authFailed("signature must be 64 lowercase hex digits")
	}
	return a, nil
}

// validAccessKeyID enforces the KMS rule: 20-30 characters of [A-Z2-7].
func validAccessKeyID(id string) error {
	if len(id) < 20 || len(id) > 30 || !allBytes(id, func(c byte) bool { return c >= 'A' && c <= 'Z' || c >= '2' && c <= '7' }) {
		return authFailed("access key id must be 20 to 30 characters of A-Z and 2-7")
	}
	return nil
}

// scopeToken reports whether s is 1-64 bytes of visible ASCII.
func scopeToken(s string) bool {
	return s != "" && len(s) <= 64 && allBytes(s, func(c byte) bool { return c > ' ' && c <= '~' })
}

// headerToken reports whether s is a lowercase HTTP header name.
func headerToken(s string) bool {
	return s != "" && allBytes(s, func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
	})
}

func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

// AccessKeyIDOf returns the access key id named by the Authorization header,
// for credential lookup before Verify.
func AccessKeyIDOf(in SigV4Input) (string, error) {
	a, err := authorizationOf(in)
	return a.AccessKeyID, err
}

func authorizationOf(in SigV4Input) (Authorization, error) {
	if presigned(in.RawQuery) {
		return Authorization{}, authFailed("presigned query string authentication is not supported; sign the Authorization header")
	}
	switch vals := headerValues(in.Header, "authorization"); len(vals) {
	case 0:
		return Authorization{}, authFailed("missing Authorization header")
	case 1:
		return ParseAuthorization(vals[0])
	default:
		return Authorization{}, authFailed("more than one Authorization header")
	}
}

// presigned reports whether the query carries SigV4 query-string auth.
func presigned(rawQuery string) bool {
	for _, kv := range strings.Split(rawQuery, "&") {
		switch k, _, _ := strings.Cut(kv, "="); strings.ToLower(k) {
		case "x-amz-signature", "x-amz-credential", "x-amz-algorithm":
			return true
		}
	}
	return false
}

// Verify checks in against up to two live credentials that share the access
// key id named in the Authorization header (creds may hold entries for other
// ids; they are picked by id). It returns the matched access key id.
func (v SigV4Verifier) Verify(in SigV4Input, creds []Credential) (string, error) {
	a, err := authorizationOf(in)
	if err != nil {
		return "", err
	}
	return v.verifyParsed(in, a, creds)
}

// verifyParsed checks everything after the Authorization header is parsed.
func (v SigV4Verifier) verifyParsed(in SigV4Input, a Authorization, creds []Credential) (string, error) {
	service, maxSkew, now := cmp.Or(v.Service, DefaultSigV4Service), v.MaxSkew, v.Now
	if maxSkew <= 0 {
		maxSkew = DefaultMaxSkew
	}
	if now == nil {
		now = time.Now
	}
	if a.Service != service {
		return "", authFailed("credential scope service must be %q", service)
	}
	date, dateHeader, err := requestDate(in.Header)
	if err != nil {
		return "", err
	}
	if !slices.Contains(a.SignedHeaders, dateHeader) {
		return "", authFailed("signed headers must include %s", dateHeader)
	}
	if skew := now().Sub(date); skew > maxSkew || skew < -maxSkew {
		return "", authFailed("request time differs from server time by %s, more than the allowed %s",
			skew.Abs().Round(time.Second), maxSkew)
	}
	if a.Date != date.Format(scopeDateLayout) {
		return "", authFailed("credential scope date does not match the request date")
	}

	payloadHash, err := payloadHash(in)
	if err != nil {
		return "", err
	}
	canonHeaders, err := canonicalHeaders(in, a.SignedHeaders)
	if err != nil {
		return "", err
	}
	canonQuery, err := canonicalQuery(in.RawQuery)
	if err != nil {
		return "", err
	}
	creq := strings.Join([]string{in.Method, canonicalURI(in.RawPath), canonQuery, canonHeaders,
		strings.Join(a.SignedHeaders, ";"), payloadHash}, "\n")
	sts := stringToSign(date, a, creq)
	given, _ := hex.DecodeString(a.Signature) // format checked by parseAuthorization

	known := false
	for _, c := range creds {
		if c.AccessKeyID != a.AccessKeyID {
			continue
		}
		known = true
		if hmac.Equal(hmacSHA256(signingKey(c.SecretAccessKey, a.Date, a.Region, a.Service), sts), given) {
			return a.AccessKeyID, nil
		}
	}
	if !known {
		return "", authFailed("unknown access key id %q", a.AccessKeyID)
	}
	return "", authFailed("signature does not match for access key id %q", a.AccessKeyID)
}

// requestDate reads X-Amz-Date, or failing that Date, and returns the time and
// the lowercase name of the header it came from.
func requestDate(h map[string][]string) (time.Time, string, error) {
	for _, d := range []struct {
		name, display, msg string
		parse              func(string) (time.Time, error)
	}{
		{"x-amz-date", "X-Amz-Date", "X-Amz-Date must be yyyymmddThhmmssZ",
			func(s string) (time.Time, error) { return time.Parse(amzDateLayout, s) }},
		{"date", "Date", "Date header is not an HTTP date", http.ParseTime},
	} {
		switch vals := headerValues(h, d.name); len(vals) {
		case 0:
			continue
		case 1:
			t, err := d.parse(strings.TrimSpace(vals[0]))
			if err != nil {
				return time.Time{}, "", authFailed("%s", d.msg)
			}
			return t.UTC(), d.name, nil
		default:
			return time.Time{}, "", authFailed("more than one %s header", d.display)
		}
	}
	return time.Time{}, "", authFailed("missing X-Amz-Date (or Date) header")
}

// payloadHash returns the hex SHA-256 of the body. A client-supplied
// X-Amz-Content-Sha256 is accepted only when it equals that hash.
func payloadHash(in SigV4Input) (string, error) {
	sum := sha256.Sum256(in.Body)
	want := hex.EncodeToString(sum[:])
	switch vals := headerValues(in.Header, "x-amz-content-sha256"); {
	case len(vals) == 0:
		return want, nil
	case len(vals) > 1:
		return "", authFailed("more than one X-Amz-Content-Sha256 header")
	case strings.TrimSpace(vals[0]) == unsignedPayload:
		return "", authFailed("unsigned payloads are not accepted")
	case strings.ToLower(strings.TrimSpace(vals[0])) != want:
		return "", authFailed("X-Amz-Content-Sha256 does not match the request body")
	}
	return want, nil
}

// canonicalHeaders builds the "name:value\n" lines for exactly the signed
// headers as the aws-sdk-go-v2 signer does: values trimmed, runs of spaces
// collapsed, repeated values joined by ",".
func canonicalHeaders(in SigV4Input, signed []string) (string, error) {
	var b strings.Builder
	for _, name := range signed {
		vals := headerValues(in.Header, name)
		if name == "host" && len(vals) == 0 && in.Host != "" {
			vals = []string{in.Host}
		}
		if len(vals) == 0 {
			return "", authFailed("signed header %q is missing from the request", name)
		}
		b.WriteString(name + ":")
		for i, val := range vals {
			if i > 0 {
				b.WriteByte(',')
			}
			for strings.Contains(val, "  ") {
				val = strings.ReplaceAll(val, "  ", " ")
			}
			b.WriteString(strings.TrimSpace(val))
		}
		b.WriteByte('\n')
	}
	return b.String(), nil
}

// headerValues returns every value of the header named (case-insensitively)
// name, visiting differently cased keys in sorted order for determinism.
func headerValues(h map[string][]string, name string) []string {
	var keys []string
	for k := range h {
		if strings.EqualFold(k, name) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		out = append(out, h[k]...)
	}
	return out
}

// canonicalURI URI-encodes the already escaped path once more, keeping '/', as
// AWS does for every service but S3 (aws-sdk-go-v2 default: EscapePath of
// EscapedPath; curl >= 8 likewise). Paths of unreserved characters only, such
// as every valid XKS path, are left unchanged, so signers that skip this step
// (DisableURIPathEscaping, curl 7.x) verify too.
func canonicalURI(rawPath string) string {
	if rawPath == "" {
		return "/"
	}
	return uriEncode(rawPath, false)
}

// canonicalQuery decodes the query, re-encodes each name and value (RFC 3986),
// and sorts by name then value after encoding, as the SDK does.
func canonicalQuery(rawQuery string) (string, error) {
	if rawQuery == "" {
		return "", nil
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "", authFailed("query string is malformed")
	}
	var pairs [][2]string
	for k, vals := range q {
		for _, val := range vals {
			pairs = append(pairs, [2]string{uriEncode(k, true), uriEncode(val, true)})
		}
	}
	slices.SortFunc(pairs, func(a, b [2]string) int {
		return cmp.Or(strings.Compare(a[0], b[0]), strings.Compare(a[1], b[1]))
	})
	out := make([]string, len(pairs))
	for i, p := range pairs {
		out[i] = p[0] + "=" + p[1]
	}
	return strings.Join(out, "&"), nil
}

// uriEncode percent-encodes (uppercase hex) every byte except A-Z a-z 0-9
// - . _ ~, and '/' unless encodeSlash.
func uriEncode(s string, encodeSlash bool) string {
	const hexUpper = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '/' && !encodeSlash {
			b.WriteByte(c)
		} else {
			b.Write([]byte{'%', hexUpper[c>>4], hexUpper[c&15]})
		}
	}
	return b.String()
}

func stringToSign(date time.Time, a Authorization, canonicalRequest string) string {
	sum := sha256.Sum256([]byte(canonicalRequest))
	return strings.Join([]string{sigV4Algorithm, date.Format(amzDateLayout),
		a.Date + "/" + a.Region + "/" + a.Service + "/" + sigV4Terminator, hex.EncodeToString(sum[:])}, "\n")
}

// signingKey derives the SigV4 key. It costs ~3µs (four HMACs), under half of
// a Verify, so it is not cached and no derived key outlives a request.
func signingKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), date)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	return hmacSHA256(k, sigV4Terminator)
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}
