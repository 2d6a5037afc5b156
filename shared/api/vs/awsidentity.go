package vs

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"strings"

	"github.com/sovkeys/sovkeys/shared"
)

// AWS instance identity (docs/aws-identity.md)
//
// An EC2 instance proves who it is by signing an sts:GetCallerIdentity
// request with its instance-profile credentials, for the STS endpoint this
// deployment is configured with, including a signed X-Sovkeys-Server-ID
// header that names the deployment. It sends only the signature headers of
// that request, as one base64(JSON) header on every volume-secret call. The
// service rebuilds the request itself (its own STS URL, the fixed body
// below) and sends it to STS: the caller never chooses a URL or a body.
const (
	// HeaderAWSIdentity carries the encoded AWSIdentity on a volume-secret call.
	HeaderAWSIdentity = "X-Sovkeys-AWS-Identity"
	// HeaderServerID is the signed header naming the deployment.
	HeaderServerID = "X-Sovkeys-Server-ID"
	// STSGetCallerIdentityBody is the only body ever signed and sent.
	STSGetCallerIdentityBody = "Action=GetCallerIdentity&Version=2011-06-15"
	// STSContentType is the content type of that body (as the AWS SDKs send it).
	STSContentType = "application/x-www-form-urlencoded"
	// AWSIdentityVersion is the version of AWSIdentity this build writes.
	AWSIdentityVersion = 1
	// MaxAWSIdentityBytes bounds the encoded header (an instance-profile
	// session token is 1-2 KiB).
	MaxAWSIdentityBytes = 8 << 10
	// maxServerIDLen bounds a server id.
	maxServerIDLen = 64
)

// AWSIdentity is the evidence of an AWS instance: the signature headers of
// its signed sts:GetCallerIdentity request, plus the tenant (VPC id) it
// claims. There is deliberately no URL and no body.
type AWSIdentity struct {
	Version int `json:"v"`
	// Tenant is the tenant id the instance claims, by default its VPC id.
	// It is verified against the instance's VPC, never trusted alone.
	Tenant string `json:"tenant,omitempty"`
	// Authorization, AmzDate and SecurityToken are the Authorization,
	// X-Amz-Date and X-Amz-Security-Token headers of the signed request.
	Authorization string `json:"authorization"`
	AmzDate       string `json:"x_amz_date"`
	SecurityToken string `json:"x_amz_security_token,omitempty"`
	// ServerID is the X-Sovkeys-Server-ID value the instance signed.
	ServerID string `json:"server_id"`
}

// Encode returns the header value: standard base64 of the JSON document.
func (a AWSIdentity) Encode() string {
	b, _ := json.Marshal(a) // strings only: cannot fail
	return base64.StdEncoding.EncodeToString(b)
}

// ErrAWSIdentity is wrapped by every ParseAWSIdentity failure.
var ErrAWSIdentity = errors.New("vs: malformed aws identity header")

// ParseAWSIdentity decodes and checks a HeaderAWSIdentity value: size,
// base64, strict JSON (no unknown fields), version, required fields, and
// header-safe characters in every value (they are copied into the request
// sent to STS). Failures carry CodeAuthenticationFailed.
func ParseAWSIdentity(h string) (AWSIdentity, error) {
	bad := func(msg string) (AWSIdentity, error) {
		return AWSIdentity{}, &identityError{err: shared.NewError(shared.CodeAuthenticationFailed, "aws identity header: %s", msg)}
	}
	if len(h) > MaxAWSIdentityBytes {
		return bad("too long")
	}
	raw, err := base64.StdEncoding.DecodeString(h)
	if err != nil {
		return bad("not standard base64")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var a AWSIdentity
	if err := dec.Decode(&a); err != nil {
		return bad("not a JSON identity document (unknown fields are refused)")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return bad("trailing data after the JSON document")
	}
	switch {
	case a.Version != AWSIdentityVersion:
		return bad("unsupported version")
	case a.Authorization == "" || a.AmzDate == "" || a.ServerID == "":
		return bad("authorization, x_amz_date and server_id are required")
	case !ValidServerID(a.ServerID):
		return bad("server_id must be 1-64 characters of [A-Za-z0-9._-]")
	case a.Tenant != "" && !validToken(a.Tenant, 64):
		return bad("tenant is malformed")
	}
	for _, v := range []string{a.Authorization, a.AmzDate, a.SecurityToken} {
		if !headerSafe(v) {
			return bad("a value holds characters not allowed in an HTTP header")
		}
	}
	return a, nil
}

// identityError carries a caller-safe *shared.Error and matches ErrAWSIdentity.
type identityError struct{ err *shared.Error }

func (e *identityError) Error() string   { return e.err.Message }
func (e *identityError) Unwrap() []error { return []error{e.err, ErrAWSIdentity} }

// ValidServerID reports whether s can name a deployment: 1-64 characters
// of [A-Za-z0-9._-].
func ValidServerID(s string) bool { return validToken(s, maxServerIDLen) }

func validToken(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// headerSafe reports whether s is visible ASCII and spaces only.
func headerSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// DefaultSTSEndpoint is the regional STS endpoint of region.
func DefaultSTSEndpoint(region string) string { return "https://sts." + region + ".amazonaws.com" }

// STSURL turns a configured STS endpoint into the exact URL both the
// instance and the service use: http(s)://host[:port][/path], no user info,
// query or fragment; an empty path becomes "/".
func STSURL(endpoint string) (*url.URL, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(u.Host, "/?#") {
		return nil, errors.New("vs: sts endpoint must be http(s)://host[:port][/path]")
	}
	if u.Path == "" {
		u.Path = "/"
	}
	return u, nil
}
