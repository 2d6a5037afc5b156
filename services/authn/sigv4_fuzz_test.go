package authn

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/sovkeys/sovkeys/shared"
)

func FuzzParseAuthorization(f *testing.F) {
	const sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
	for _, s := range []string{
		"AWS4-HMAC-SHA256 Credential=" + testAK1 + "/20260314/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=" + sig,
		"AWS4-HMAC-SHA256 Credential=" + testAK2 + "/20260314/eu-west-1/kms-xks-proxy/aws4_request,SignedHeaders=content-type;host;x-amz-date,Signature=" + sig,
		"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=" + sig,
		"AWS4-HMAC-SHA256 Signature=" + sig + ", Credential=" + testAK1 + "/20260314/r/s/aws4_request, SignedHeaders=host",
		"AWS4-HMAC-SHA256 Credential=/////, SignedHeaders=;;, Signature=",
		"AWS4-HMAC-SHA256 Credential==, SignedHeaders==, Signature==",
		"AWS4-HMAC-SHA256 ,,,",
		"Basic dXNlcjpwYXNz",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		a, err := ParseAuthorization(h)
		if err != nil {
			if !errors.Is(err, shared.ErrAuthenticationFailed) {
				t.Fatalf("error %v is not an authentication failure", err)
			}
			return
		}
		if validAccessKeyID(a.AccessKeyID) != nil || len(a.Signature) != 64 || !slices.Contains(a.SignedHeaders, "host") ||
			!slices.IsSorted(a.SignedHeaders) {
			t.Fatalf("accepted invalid authorization %+v from %q", a, h)
		}
		// Round trip: the canonical rendering parses to the same value.
		again := sigV4Algorithm + " Credential=" + strings.Join([]string{a.AccessKeyID, a.Date, a.Region, a.Service, sigV4Terminator}, "/") +
			", SignedHeaders=" + strings.Join(a.SignedHeaders, ";") + ", Signature=" + a.Signature
		b, err := ParseAuthorization(again)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", again, err)
		}
		if a.AccessKeyID != b.AccessKeyID || a.Date != b.Date || a.Region != b.Region || a.Service != b.Service ||
			!slices.Equal(a.SignedHeaders, b.SignedHeaders) || a.Signature != b.Signature {
			t.Fatalf("round trip changed %+v to %+v", a, b)
		}
	})
}

// FuzzVerify checks that Verify never panics on arbitrary requests, and that
// every request the aws-sdk-go-v2 signer signs (the known-good reference)
// verifies, with the fuzzed path, query, extra signed header and body.
func FuzzVerify(f *testing.F) {
	ref := kmsRequest(f, Credential{testAK1, testSK1})
	refAuth := http.Header(ref.Header).Get("Authorization")
	f.Add(encryptPath, "", "application/json", []byte(encryptBody), refAuth, "20260314T150926Z", int64(0))
	f.Add("/tenant_a-1/kms/xks/v1/keys/k.1~2/decrypt", "a=1&b=%2F&a=0", "  x   y ", []byte("{}"), refAuth, "20260314T150926Z", int64(300))
	f.Add("/kms/xks/v1/keys/a%2Fb/metadata", "x=a+b;c", "\t", []byte{}, "AWS4-HMAC-SHA256 ", "", int64(-300))
	f.Add("", "X-Amz-Signature=1", "", []byte(nil), "", "2026", int64(1))
	f.Add("/%zz/ሴ", "%zz", "v\r\nx", []byte{0}, "AWS4-HMAC-SHA256 Credential="+testAK1+"/20260314/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-custom;x-amz-date, Signature="+strings.Repeat("0", 64), "20260314T150926Z", int64(-1))

	f.Fuzz(func(t *testing.T, path, query, custom string, body []byte, authz, amzDate string, skew int64) {
		v := fixedVerifier(signTime)

		// Arbitrary input: no panic, and only coded authentication errors.
		in := SigV4Input{Method: http.MethodPost, RawPath: path, RawQuery: query, Host: testHost, Body: body,
			Header: map[string][]string{"Authorization": {authz}, "X-Amz-Date": {amzDate}, "X-Custom": {custom}}}
		if id, err := v.Verify(in, allCreds); err != nil {
			if !errors.Is(err, shared.ErrAuthenticationFailed) {
				t.Fatalf("error %v is not an authentication failure", err)
			}
		} else if id != testAK1 && id != testAK2 && id != otherAK {
			t.Fatalf("Verify returned id %q not in creds", id)
		}
		_, _ = AccessKeyIDOf(in)

		// Differential: whatever the SDK signer signs must verify.
		if strings.ContainsAny(custom, "\r\n\x00") {
			return // not a valid header value on the wire
		}
		req, err := http.NewRequest(http.MethodPost, "https://"+testHost+"/"+strings.TrimPrefix(path, "/"), nil)
		if err != nil || req.URL.Host != testHost {
			return
		}
		req.URL.RawQuery = query
		if _, err := url.ParseQuery(query); err != nil || presigned(query) {
			return // the SDK silently drops malformed query parts; we reject them
		}
		req.Header.Set("X-Custom", custom)
		at := signTime.Add(time.Duration(skew%301) * time.Second)
		creds := aws.Credentials{AccessKeyID: testAK2, SecretAccessKey: testSK2}
		if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, sha256Hex(body), testService, "us-east-1", at); err != nil {
			return
		}
		signed := SigV4Input{Method: req.Method, RawPath: req.URL.EscapedPath(), RawQuery: query, Host: req.Host,
			Header: req.Header, Body: body}
		if signed.Host == "" {
			signed.Host = req.URL.Host
		}
		if id, err := v.Verify(signed, allCreds); err != nil || id != testAK2 {
			t.Fatalf("SDK-signed request (path %q, query %q, header %q) failed: %q, %v\n%s",
				signed.RawPath, query, custom, id, err, req.Header.Get("Authorization"))
		}
	})
}
