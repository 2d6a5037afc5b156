package awstest

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// An independent AWS Signature Version 4 verifier, written from the public
// specification (not shared with services/authn), so that the tests prove
// what sovkeys and its client send is signed as AWS expects.

const (
	amzDateLayout = "20060102T150405Z"
	// maxRequestAge is how far a request's X-Amz-Date may be from the
	// server clock, as on AWS.
	maxRequestAge = 15 * time.Minute
)

// authorization is a parsed AWS4-HMAC-SHA256 Authorization header.
type authorization struct {
	accessKeyID, date, region, service string
	signedHeaders                      []string
	signature                          string
}

func parseAuthorization(h string) (authorization, bool) {
	rest, ok := strings.CutPrefix(h, "AWS4-HMAC-SHA256 ")
	if !ok {
		return authorization{}, false
	}
	parts := map[string]string{}
	for _, p := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok {
			return authorization{}, false
		}
		parts[k] = v
	}
	scope := strings.Split(parts["Credential"], "/")
	if len(scope) != 5 || scope[4] != "aws4_request" || parts["SignedHeaders"] == "" || len(parts["Signature"]) != 64 {
		return authorization{}, false
	}
	return authorization{
		accessKeyID: scope[0], date: scope[1], region: scope[2], service: scope[3],
		signedHeaders: strings.Split(parts["SignedHeaders"], ";"), signature: parts["Signature"],
	}, true
}

// canonicalRequest builds the SigV4 canonical request of r with body.
func canonicalRequest(r *http.Request, body []byte, signed []string) (string, bool) {
	var hb strings.Builder
	for _, name := range signed {
		var vals []string
		switch name {
		case "host":
			vals = []string{r.Host}
		case "content-length":
			vals = r.Header.Values("Content-Length")
			if len(vals) == 0 && r.ContentLength >= 0 {
				vals = []string{strconv.FormatInt(r.ContentLength, 10)}
			}
		default:
			vals = r.Header.Values(name)
		}
		if len(vals) == 0 {
			return "", false
		}
		for i, v := range vals {
			vals[i] = strings.Join(strings.Fields(v), " ")
		}
		hb.WriteString(name + ":" + strings.Join(vals, ",") + "\n")
	}
	sum := sha256.Sum256(body)
	return strings.Join([]string{
		r.Method, canonicalURI(r.URL.EscapedPath()), canonicalQuery(r.URL.RawQuery),
		hb.String(), strings.Join(signed, ";"), hex.EncodeToString(sum[:]),
	}, "\n"), true
}

func canonicalURI(p string) string {
	if p == "" {
		return "/"
	}
	return escape(p, false)
}

func canonicalQuery(raw string) string {
	q, _ := url.ParseQuery(raw)
	var pairs []string
	for k, vs := range q {
		for _, v := range vs {
			pairs = append(pairs, escape(k, true)+"="+escape(v, true))
		}
	}
	slices.SortFunc(pairs, func(a, b string) int {
		ka, va, _ := strings.Cut(a, "=")
		kb, vb, _ := strings.Cut(b, "=")
		return cmp.Or(strings.Compare(ka, kb), strings.Compare(va, vb))
	})
	return strings.Join(pairs, "&")
}

// escape is RFC 3986 percent-encoding with uppercase hex; '/' is kept unless
// slash is set.
func escape(s string, slash bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0 || c == '/' && !slash {
			b.WriteByte(c)
			continue
		}
		b.WriteString("%" + strings.ToUpper(hex.EncodeToString([]byte{c})))
	}
	return b.String()
}

// signature computes the hex signature of a canonical request.
func signature(secret string, a authorization, amzDate, creq string) string {
	sum := sha256.Sum256([]byte(creq))
	sts := strings.Join([]string{"AWS4-HMAC-SHA256", amzDate,
		a.date + "/" + a.region + "/" + a.service + "/aws4_request", hex.EncodeToString(sum[:])}, "\n")
	k := mac([]byte("AWS4"+secret), a.date)
	k = mac(k, a.region)
	k = mac(k, a.service)
	k = mac(k, "aws4_request")
	return hex.EncodeToString(mac(k, sts))
}

func mac(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// authenticate verifies r's signature for service and returns the principal
// whose credentials signed it.
func (s *Server) authenticate(r *http.Request, body []byte, service string) (*principal, *apiError) {
	sigErr := func(msg string) *apiError {
		if service == "ec2" {
			return &apiError{http.StatusUnauthorized, "AuthFailure", msg}
		}
		return &apiError{http.StatusForbidden, "SignatureDoesNotMatch", msg}
	}
	unknown := func() *apiError {
		if service == "ec2" {
			return &apiError{http.StatusUnauthorized, "AuthFailure", "AWS was not able to validate the provided access credentials"}
		}
		return &apiError{http.StatusForbidden, "InvalidClientTokenId", "The security token included in the request is invalid."}
	}
	auths := r.Header.Values("Authorization")
	if len(auths) != 1 {
		return nil, &apiError{http.StatusForbidden, "MissingAuthenticationToken", "Request is missing Authentication Token"}
	}
	a, ok := parseAuthorization(auths[0])
	if !ok {
		return nil, &apiError{http.StatusBadRequest, "IncompleteSignature", "Authorization header is malformed"}
	}
	if !slices.Contains(a.signedHeaders, "host") || !slices.Contains(a.signedHeaders, "x-amz-date") || !slices.IsSorted(a.signedHeaders) {
		return nil, &apiError{http.StatusBadRequest, "IncompleteSignature", "host and x-amz-date must be signed; signed headers sorted"}
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse(amzDateLayout, amzDate)
	if err != nil || a.date != amzDate[:8] {
		return nil, &apiError{http.StatusBadRequest, "IncompleteSignature", "X-Amz-Date is missing, malformed or not the credential date"}
	}
	if d := s.clock().Sub(t); d > maxRequestAge || d < -maxRequestAge {
		if service == "ec2" {
			return nil, &apiError{http.StatusBadRequest, "RequestExpired", "Request has expired."}
		}
		return nil, sigErr("Signature expired: " + amzDate + " is now earlier than the allowed window.")
	}
	if a.service != service || a.region != s.Region {
		return nil, sigErr("Credential should be scoped to a valid region and service: " + s.Region + "/" + service)
	}
	s.mu.Lock()
	p := s.keys[a.accessKeyID]
	s.mu.Unlock()
	if p == nil {
		return nil, unknown()
	}
	if tok := r.Header.Values("X-Amz-Security-Token"); p.cred.SessionToken != "" && (len(tok) != 1 || tok[0] != p.cred.SessionToken) ||
		p.cred.SessionToken == "" && len(tok) != 0 {
		return nil, unknown()
	}
	if !p.expires.IsZero() && !s.clock().Before(p.expires) {
		return nil, &apiError{http.StatusForbidden, "ExpiredToken", "The security token included in the request is expired"}
	}
	creq, ok := canonicalRequest(r, body, a.signedHeaders)
	if !ok {
		return nil, sigErr("A signed header is missing from the request")
	}
	if !hmac.Equal([]byte(signature(p.cred.SecretAccessKey, a, amzDate, creq)), []byte(a.signature)) {
		return nil, sigErr("The request signature we calculated does not match the signature you provided.")
	}
	return p, nil
}
