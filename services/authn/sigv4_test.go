package authn

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/sovkeys/sovkeys/shared"
)

const (
	testAK1     = "AKIAXKSPROXYTESTKEY2"                         // 20 chars
	testSK1     = "x7Jm0Jc3n9c0pQ3cV2yE0hZr5wS1tQ6uP8aB4dF7gH2k" // 44 chars
	testAK2     = "AKIAXKSPROXYROTATEDKEY7ABCDEFG"               // 30 chars
	testSK2     = "Zk9q/Lm+3Rt7Vw2Xy5Ab8Cd1Ef4Gh6Ij0Kl3Mn5Op7Qr9St2Uv4Wx6Yz8=="
	otherAK     = "AKIAOTHERSTOREKEY234"
	otherSK     = "OtherStoreSecretOtherStoreSecretOtherStore1"
	testService = "kms-xks-proxy"
	testHost    = "xks.example.com"
	encryptPath = "/kms/xks/v1/keys/abc/encrypt"
	encryptBody = `{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsOperation":"Encrypt","kmsRequestId":"4112f4d6-db54-4af4-ae30-c55a22a8dfae","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"},"plaintext":"SGVsbG8gV29ybGQh","encryptionAlgorithm":"AES_GCM"}`
)

var (
	signTime = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	allCreds = []Credential{{otherAK, otherSK}, {testAK1, testSK1}, {testAK2, testSK2}}
)

func fixedVerifier(now time.Time) SigV4Verifier {
	return SigV4Verifier{Service: testService, MaxSkew: 5 * time.Minute, Now: func() time.Time { return now }}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// sdkSign signs a request with the aws-sdk-go-v2 signer, the known-good
// reference, and returns it as the gateway would see it. Headers in signed are
// set before signing (so they are signed, KMS-style only host and x-amz-date
// are); headers in unsigned are added afterwards.
func sdkSign(t testing.TB, method, rawURL string, body []byte, signed, unsigned map[string]string,
	cred Credential, service, region string, at time.Time, opts ...func(*v4.SignerOptions)) SigV4Input {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range signed {
		req.Header.Set(k, v)
	}
	creds := aws.Credentials{AccessKeyID: cred.AccessKeyID, SecretAccessKey: cred.SecretAccessKey}
	if err := v4.NewSigner(opts...).SignHTTP(context.Background(), creds, req, sha256Hex(body), service, region, at); err != nil {
		t.Fatal(err)
	}
	for k, v := range unsigned {
		req.Header.Set(k, v)
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	return SigV4Input{Method: method, RawPath: req.URL.EscapedPath(), RawQuery: req.URL.RawQuery,
		Host: host, Header: req.Header.Clone(), Body: body}
}

// kmsRequest is an encrypt call as KMS sends it: signed headers host;x-amz-date.
func kmsRequest(t testing.TB, cred Credential) SigV4Input {
	return sdkSign(t, http.MethodPost, "https://"+testHost+encryptPath, []byte(encryptBody), nil,
		map[string]string{"Content-Type": "application/json", "User-Agent": "aws-kms"},
		cred, testService, "us-east-1", signTime)
}

func withHeader(in SigV4Input, k string, v ...string) SigV4Input {
	h := http.Header(in.Header).Clone()
	if v == nil {
		h.Del(k)
	} else {
		h[http.CanonicalHeaderKey(k)] = v
	}
	in.Header = h
	return in
}

func withAuth(in SigV4Input, f func(string) string) SigV4Input {
	return withHeader(in, "Authorization", f(http.Header(in.Header).Get("Authorization")))
}

var hex64 = regexp.MustCompile(`[0-9a-f]{64}`)

// checkAuthErr asserts err is a caller-safe authentication failure.
func checkAuthErr(t *testing.T, err error, wantMsg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want error containing %q, got nil", wantMsg)
	}
	var se *shared.Error
	if !errors.As(err, &se) || !errors.Is(err, shared.ErrAuthenticationFailed) {
		t.Fatalf("error %v (%T) is not a *shared.Error with code authentication_failed", err, err)
	}
	if !strings.Contains(err.Error(), wantMsg) {
		t.Errorf("error %q does not contain %q", err, wantMsg)
	}
	for _, secret := range []string{testSK1, testSK2, otherSK} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q leaks a secret", err)
		}
	}
	if hex64.MatchString(err.Error()) {
		t.Errorf("error %q contains a signature-like hex string", err)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	base := kmsRequest(t, Credential{testAK1, testSK1})
	base2 := kmsRequest(t, Credential{testAK2, testSK2})
	if got := http.Header(base.Header).Get("Authorization"); !strings.Contains(got, "SignedHeaders=host;x-amz-date,") {
		t.Fatalf("reference request is not KMS style: %s", got)
	}
	body := []byte(encryptBody)

	tests := []struct {
		name   string
		in     SigV4Input
		creds  []Credential
		now    time.Time
		wantID string
		errMsg string
	}{
		{name: "first credential of pair", in: base, wantID: testAK1},
		{name: "second credential of pair", in: base2, wantID: testAK2},
		{name: "only matching credential given", in: base, creds: []Credential{{testAK1, testSK1}}, wantID: testAK1},
		{name: "wrong secret", in: base, creds: []Credential{{testAK1, testSK2}, {testAK2, testSK2}},
			errMsg: `signature does not match for access key id "` + testAK1 + `"`},
		{name: "unknown access key id", in: base, creds: []Credential{{testAK2, testSK2}},
			errMsg: `unknown access key id "` + testAK1 + `"`},
		{name: "no credentials", in: base, creds: []Credential{}, errMsg: "unknown access key id"},
		{name: "tampered body", in: func() SigV4Input {
			in := base
			in.Body = bytes.Replace(body, []byte("Encrypt"), []byte("Decrypt"), 1)
			return in
		}(),
			errMsg: "signature does not match"},
		{name: "tampered path", in: func() SigV4Input { in := base; in.RawPath = "/kms/xks/v1/keys/abd/encrypt"; return in }(),
			errMsg: "signature does not match"},
		{name: "tampered method", in: func() SigV4Input { in := base; in.Method = "PUT"; return in }(),
			errMsg: "signature does not match"},
		{name: "tampered query", in: func() SigV4Input { in := base; in.RawQuery = "a=b"; return in }(),
			errMsg: "signature does not match"},
		{name: "tampered signed host", in: func() SigV4Input { in := base; in.Host = "evil.example.com"; return in }(),
			errMsg: "signature does not match"},
		{name: "tampered signed x-amz-date", in: withHeader(base, "X-Amz-Date", "20260314T150927Z"),
			errMsg: "signature does not match"},
		{name: "unsigned content-type changed", in: withHeader(base, "Content-Type", "text/plain"), wantID: testAK1},
		{name: "unsigned header added", in: withHeader(base, "X-Forwarded-For", "10.0.0.1"), wantID: testAK1},
		{name: "unsigned header removed", in: withHeader(base, "User-Agent"), wantID: testAK1},
		{name: "lowercase header names", in: func() SigV4Input {
			in := base
			in.Header = map[string][]string{}
			for k, v := range base.Header {
				in.Header[strings.ToLower(k)] = v
			}
			return in
		}(), wantID: testAK1},
		{name: "host header in map wins", in: func() SigV4Input { in := withHeader(base, "Host", testHost); in.Host = ""; return in }(), wantID: testAK1},
		{name: "skew +5m boundary", in: base, now: signTime.Add(5 * time.Minute), wantID: testAK1},
		{name: "skew -5m boundary", in: base, now: signTime.Add(-5 * time.Minute), wantID: testAK1},
		{name: "skew +5m1s", in: base, now: signTime.Add(5*time.Minute + time.Second),
			errMsg: "request time differs from server time by 5m1s, more than the allowed 5m0s"},
		{name: "skew -5m1s", in: base, now: signTime.Add(-5*time.Minute - time.Second),
			errMsg: "request time differs from server time by 5m1s"},
		{name: "skew a day", in: base, now: signTime.Add(24 * time.Hour), errMsg: "by 24h0m0s"},
		{name: "scope date differs from x-amz-date", in: withAuth(base, func(s string) string {
			return strings.Replace(s, "/20260314/", "/20260313/", 1)
		}), errMsg: "credential scope date does not match the request date"},
		{name: "scope terminator", in: withAuth(base, func(s string) string {
			return strings.Replace(s, "/aws4_request", "/aws5_request", 1)
		}), errMsg: "credential scope must end in aws4_request"},
		{name: "other region accepted", in: sdkSign(t, http.MethodPost, "https://"+testHost+encryptPath, body, nil, nil,
			Credential{testAK1, testSK1}, testService, "eu-central-2", signTime), wantID: testAK1},
		{name: "wrong service", in: sdkSign(t, http.MethodPost, "https://"+testHost+encryptPath, body, nil, nil,
			Credential{testAK1, testSK1}, "kms", "us-east-1", signTime), errMsg: `credential scope service must be "kms-xks-proxy"`},
		{name: "bad x-amz-date", in: withHeader(base, "X-Amz-Date", "2026-03-14T15:09:26Z"), errMsg: "X-Amz-Date must be yyyymmddThhmmssZ"},
		{name: "two x-amz-date values", in: withHeader(base, "X-Amz-Date", "20260314T150926Z", "20260314T150926Z"),
			errMsg: "more than one X-Amz-Date header"},
		{name: "missing x-amz-date", in: withHeader(base, "X-Amz-Date"), errMsg: "missing X-Amz-Date (or Date) header"},
		{name: "date header but x-amz-date signed", in: withHeader(withHeader(base, "X-Amz-Date"), "Date", "Sat, 14 Mar 2026 15:09:26 GMT"),
			errMsg: "signed headers must include date"},
		{name: "missing authorization", in: withHeader(base, "Authorization"), errMsg: "missing Authorization header"},
		{name: "two authorization headers", in: withHeader(base, "Authorization", "a", "b"), errMsg: "more than one Authorization header"},
		{name: "malformed authorization", in: withHeader(base, "Authorization", "Basic dXNlcjpwYXNz"), errMsg: "must use the AWS4-HMAC-SHA256 algorithm"},
		{name: "bad access key id", in: withAuth(base, func(s string) string { return strings.Replace(s, testAK1, "akiaxksproxytestkey2", 1) }),
			errMsg: "access key id must be 20 to 30 characters of A-Z and 2-7"},
		{name: "signed header missing from request", in: withAuth(base, func(s string) string {
			return strings.Replace(s, "SignedHeaders=host;x-amz-date", "SignedHeaders=content-md5;host;x-amz-date", 1)
		}), errMsg: `signed header "content-md5" is missing from the request`},
		{name: "dropping a signed header", in: withAuth(base, func(s string) string {
			return strings.Replace(s, "SignedHeaders=host;x-amz-date", "SignedHeaders=host", 1)
		}), errMsg: "signed headers must include x-amz-date"},
		{name: "signature flipped", in: withAuth(base, func(s string) string {
			i := strings.LastIndex(s, "=") + 1
			c := "0"
			if s[i] == '0' {
				c = "1"
			}
			return s[:i] + c + s[i+1:]
		}), errMsg: "signature does not match"},
		{name: "content sha256 matching body", in: withHeader(base, "X-Amz-Content-Sha256", sha256Hex(body)), wantID: testAK1},
		{name: "content sha256 unsigned payload", in: withHeader(base, "X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
			errMsg: "unsigned payloads are not accepted"},
		{name: "content sha256 mismatch", in: withHeader(base, "X-Amz-Content-Sha256", sha256Hex([]byte("other"))),
			errMsg: "X-Amz-Content-Sha256 does not match the request body"},
		{name: "presigned query", in: func() SigV4Input {
			in := base
			in.RawQuery = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x&X-Amz-Signature=y"
			return in
		}(), errMsg: "presigned query string authentication is not supported"},
		{name: "malformed query", in: func() SigV4Input { in := base; in.RawQuery = "a=%zz"; return in }(), errMsg: "query string is malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := tc.now
			if now.IsZero() {
				now = signTime
			}
			creds := tc.creds
			if creds == nil {
				creds = allCreds
			}
			id, err := fixedVerifier(now).Verify(tc.in, creds)
			if tc.errMsg != "" {
				checkAuthErr(t, err, tc.errMsg)
				if id != "" {
					t.Errorf("id = %q on failure", id)
				}
				return
			}
			if err != nil || id != tc.wantID {
				t.Fatalf("Verify = %q, %v; want %q", id, err, tc.wantID)
			}
		})
	}
}

func TestVerifyZeroValueDefaults(t *testing.T) {
	t.Parallel()
	in := kmsRequest(t, Credential{testAK1, testSK1})
	if _, err := (SigV4Verifier{Now: func() time.Time { return signTime }}).Verify(in, allCreds); err != nil {
		t.Fatal(err)
	}
	if _, err := (SigV4Verifier{}).Verify(in, allCreds); !errors.Is(err, shared.ErrAuthenticationFailed) {
		t.Fatalf("stale request with wall clock: err = %v", err)
	}
}

// TestVerifyPaths checks the canonical URI against the SDK signer with and
// without its own path escaping, for XKS paths with and without a prefix.
func TestVerifyPaths(t *testing.T) {
	t.Parallel()
	disable := func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true }
	tests := []struct {
		name, path string
		opts       []func(*v4.SignerOptions)
		wantErr    bool
	}{
		{name: "encrypt", path: encryptPath},
		{name: "encrypt no path escaping", path: encryptPath, opts: []func(*v4.SignerOptions){disable}},
		{name: "prefix", path: "/tenant_a-1/store_02/kms/xks/v1/keys/key-1_a.b~c/decrypt"},
		{name: "prefix no path escaping", path: "/tenant_a-1/store_02/kms/xks/v1/keys/key-1_a.b~c/decrypt", opts: []func(*v4.SignerOptions){disable}},
		{name: "health", path: "/kms/xks/v1/health"},
		{name: "empty path", path: ""},
		{name: "escaped slash double encoded", path: "/kms/xks/v1/keys/a%2Fb/metadata"},
		{name: "reserved chars double encoded", path: "/kms/xks/v1/keys/a:b@c!d$e/metadata"},
		{name: "space double encoded", path: "/kms/xks/v1/keys/a%20b/metadata"},
		// Without the SDK's escaping the canonical URI is the path as sent;
		// AWS services (and we) double-encode, so these differ by design.
		{name: "escaped slash single encoded", path: "/kms/xks/v1/keys/a%2Fb/metadata", opts: []func(*v4.SignerOptions){disable}, wantErr: true},
		{name: "query sorted", path: "/kms/xks/v1/health?b=2&a=3&a=1&c=x%2Fy+z&d"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := sdkSign(t, http.MethodPost, "https://"+testHost+tc.path, []byte(`{}`), nil, nil,
				Credential{testAK2, testSK2}, testService, "us-west-2", signTime, tc.opts...)
			_, err := fixedVerifier(signTime).Verify(in, allCreds)
			if tc.wantErr {
				checkAuthErr(t, err, "signature does not match")
			} else if err != nil {
				t.Fatalf("raw path %q query %q: %v", in.RawPath, in.RawQuery, err)
			}
		})
	}
}

// TestVerifyOverHTTP sends SDK-signed requests through net/http and verifies
// what the server sees, as the gateway will. KMS signs host;x-amz-date; the
// SDK signs content-length too when the request has a known length.
func TestVerifyOverHTTP(t *testing.T) {
	t.Parallel()
	got := make(chan SigV4Input, 1)
	srv := httptest.NewServer(captureHandler(got))
	defer srv.Close()

	tests := []struct {
		name, path, wantSigned string
		signLength             bool
	}{
		{"kms style", encryptPath, "host;x-amz-date", false},
		{"kms style prefix", "/my_pre-fix/kms/xks/v1/keys/k_1-2.3/decrypt", "host;x-amz-date", false},
		{"content-length signed", encryptPath, "content-length;host;x-amz-date", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(encryptBody)
			req, err := http.NewRequest(http.MethodPost, srv.URL+tc.path, bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if !tc.signLength {
				req.ContentLength = 0 // hide the length from the signer only
			}
			creds := aws.Credentials{AccessKeyID: testAK1, SecretAccessKey: testSK1}
			now := time.Now()
			if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, sha256Hex(body), testService, "us-east-1", now); err != nil {
				t.Fatal(err)
			}
			req.ContentLength = int64(len(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			in := <-got
			if auth := http.Header(in.Header).Get("Authorization"); !strings.Contains(auth, "SignedHeaders="+tc.wantSigned+",") {
				t.Fatalf("SDK signed %s; want %s", auth, tc.wantSigned)
			}
			if id, err := fixedVerifier(now).Verify(in, allCreds); err != nil || id != testAK1 {
				t.Fatalf("Verify = %q, %v", id, err)
			}
		})
	}
}

func captureHandler(got chan<- SigV4Input) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- SigV4Input{Method: r.Method, RawPath: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
			Host: r.Host, Header: r.Header.Clone(), Body: body}
	}
}

// TestVerifyCurl runs the real curl --aws-sigv4 against a local server and
// verifies the captured request. curl uses the wall clock, so Now is real.
func TestVerifyCurl(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	if out, _ := exec.Command(curl, "--help", "all").Output(); !bytes.Contains(out, []byte("--aws-sigv4")) {
		t.Skip("curl lacks --aws-sigv4")
	}
	got := make(chan SigV4Input, 1)
	srv := httptest.NewServer(captureHandler(got))
	defer srv.Close()

	body := encryptBody
	tests := []struct {
		name, path string
		extra      []string
		wantSigned string
		wantErr    string
	}{
		{name: "encrypt with content-type", path: encryptPath,
			extra: []string{"-H", "Content-Type: application/json"}, wantSigned: "content-type;host;x-amz-date"},
		{name: "prefix with content-type", path: "/my_pre-fix/kms/xks/v1/keys/k_1-2.3/encrypt",
			extra: []string{"-H", "Content-Type: application/json"}, wantSigned: "content-type;host;x-amz-date"},
		{name: "health without content-type", path: "/kms/xks/v1/health", wantSigned: "host;x-amz-date"},
		{name: "content sha256 header", path: encryptPath,
			extra:      []string{"-H", "Content-Type: application/json", "-H", "x-amz-content-sha256: " + sha256Hex([]byte(body))},
			wantSigned: "content-type;host;x-amz-content-sha256;x-amz-date"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-sS", "-o", "/dev/null", "--aws-sigv4", "aws:amz:us-east-1:" + testService,
				"--user", testAK1 + ":" + testSK1, "-d", body}, tc.extra...)
			now := time.Now()
			if out, err := exec.Command(curl, append(args, srv.URL+tc.path)...).CombinedOutput(); err != nil {
				t.Fatalf("curl: %v: %s", err, out)
			}
			in := <-got
			auth := http.Header(in.Header).Get("Authorization")
			if !strings.Contains(auth, "SignedHeaders="+tc.wantSigned+",") {
				t.Errorf("curl signed %s; want %s", auth, tc.wantSigned)
			}
			id, err := fixedVerifier(now).Verify(in, allCreds)
			if err != nil || id != testAK1 {
				t.Fatalf("Verify = %q, %v (Authorization %s)", id, err, auth)
			}
		})
	}
}

// TestAWSTestSuite checks vectors from AWS's public SigV4 test suite. Their
// access key id AKIDEXAMPLE fails the XKS format rule, so the steps after
// parsing run directly.
func TestAWSTestSuite(t *testing.T) {
	t.Parallel()
	const prefix = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature="
	creds := []Credential{{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}}
	at := time.Date(2015, 8, 30, 12, 36, 0, 0, time.UTC)
	tests := []struct{ name, method, query, sig string }{
		{"get-vanilla", "GET", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
		{"get-vanilla-query-order-key-case", "GET", "Param2=value2&Param1=value1", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
		{"post-vanilla", "POST", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := SigV4Input{Method: tc.method, RawPath: "/", RawQuery: tc.query,
				Header: map[string][]string{"Host": {"example.amazonaws.com"}, "X-Amz-Date": {"20150830T123600Z"}}}
			a, err := parseAuthorization(prefix + tc.sig)
			if err != nil {
				t.Fatal(err)
			}
			v := SigV4Verifier{Service: "service", MaxSkew: 5 * time.Minute, Now: func() time.Time { return at }}
			if id, err := v.verifyParsed(in, a, creds); err != nil || id != "AKIDEXAMPLE" {
				t.Fatalf("verifyParsed = %q, %v", id, err)
			}
			if _, err := ParseAuthorization(prefix + tc.sig); err == nil {
				t.Error("ParseAuthorization accepted AKIDEXAMPLE")
			}
		})
	}
}

// TestVerifyDateHeader covers the Date fallback. The SDK always sets
// X-Amz-Date, so the signature comes from the same steps Verify uses; the
// steps themselves are checked against the SDK and AWS vectors above.
func TestVerifyDateHeader(t *testing.T) {
	t.Parallel()
	in := SigV4Input{Method: "POST", RawPath: encryptPath, Host: testHost, Body: []byte(`{}`),
		Header: map[string][]string{"Date": {"Sat, 14 Mar 2026 15:09:26 GMT"}}}
	a := Authorization{AccessKeyID: testAK1, Date: "20260314", Region: "us-east-1", Service: testService,
		SignedHeaders: []string{"date", "host"}}
	ch, err := canonicalHeaders(in, a.SignedHeaders)
	if err != nil {
		t.Fatal(err)
	}
	creq := strings.Join([]string{"POST", encryptPath, "", ch, "date;host", sha256Hex(in.Body)}, "\n")
	a.Signature = hex.EncodeToString(hmacSHA256(signingKey(testSK1, a.Date, a.Region, a.Service), stringToSign(signTime, a, creq)))
	in.Header["Authorization"] = []string{sigV4Algorithm + " Credential=" + testAK1 + "/20260314/us-east-1/" + testService +
		"/aws4_request, SignedHeaders=date;host, Signature=" + a.Signature}

	if id, err := fixedVerifier(signTime).Verify(in, allCreds); err != nil || id != testAK1 {
		t.Fatalf("Verify = %q, %v", id, err)
	}
	bad := withHeader(in, "Date", "yesterday")
	checkAuthErr(t, func() error { _, err := fixedVerifier(signTime).Verify(bad, allCreds); return err }(), "Date header is not an HTTP date")
}

func TestCanonicalHeaderValues(t *testing.T) {
	t.Parallel()
	in := SigV4Input{Host: " h.example  ", Header: map[string][]string{
		"X-A":  {"  a   b  c ", "\td"},
		"x-a":  {"e"},
		"X-B":  {"1 \t  2"},
		"Host": nil,
	}}
	got, err := canonicalHeaders(in, []string{"host", "x-a", "x-b"})
	if err != nil {
		t.Fatal(err)
	}
	want := "host:h.example\nx-a:a b c,d,e\nx-b:1 \t 2\n"
	if got != want {
		t.Errorf("canonicalHeaders = %q, want %q", got, want)
	}
}

func TestParseAuthorization(t *testing.T) {
	t.Parallel()
	const sig = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	good := "AWS4-HMAC-SHA256 Credential=" + testAK1 + "/20260314/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=" + sig
	a, err := ParseAuthorization(good)
	if err != nil {
		t.Fatal(err)
	}
	want := Authorization{AccessKeyID: testAK1, Date: "20260314", Region: "us-east-1", Service: "kms-xks-proxy",
		SignedHeaders: []string{"content-type", "host", "x-amz-date"}, Signature: sig}
	if a.AccessKeyID != want.AccessKeyID || a.Date != want.Date || a.Region != want.Region || a.Service != want.Service ||
		strings.Join(a.SignedHeaders, ";") != strings.Join(want.SignedHeaders, ";") || a.Signature != want.Signature {
		t.Fatalf("ParseAuthorization = %+v, want %+v", a, want)
	}
	if _, err := ParseAuthorization(strings.ReplaceAll(good, ", ", ",")); err != nil {
		t.Errorf("no spaces after commas: %v", err)
	}

	tests := []struct{ name, in, msg string }{
		{"empty", "", "must use the AWS4-HMAC-SHA256 algorithm"},
		{"other algorithm", strings.Replace(good, "AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256", 1), "must use the AWS4-HMAC-SHA256 algorithm"},
		{"no components", "AWS4-HMAC-SHA256 ", "malformed"},
		{"unknown component", good + ", Foo=bar", "unknown or misspelt component"},
		{"repeated component", good + ", Signature=" + sig, "repeats the Signature component"},
		{"missing signature", strings.Split(good, ", Signature")[0], "needs Credential, SignedHeaders and Signature"},
		{"short credential", strings.Replace(good, "/us-east-1/", "/", 1), "credential must be"},
		{"empty access key id", strings.Replace(good, "="+testAK1+"/", "=/", 1), "no access key id"},
		{"short access key id", strings.Replace(good, testAK1, "AKIA234", 1), "access key id must be 20 to 30"},
		{"long access key id", strings.Replace(good, testAK1, strings.Repeat("A", 31), 1), "access key id must be 20 to 30"},
		{"digit 8 in access key id", strings.Replace(good, testAK1, "AKIAXKSPROXYTESTKEY8", 1), "access key id must be 20 to 30"},
		{"bad scope date", strings.Replace(good, "/20260314/", "/2026-03-14/", 1), "scope date is not yyyymmdd"},
		{"impossible scope date", strings.Replace(good, "/20260314/", "/20261340/", 1), "scope date is not yyyymmdd"},
		{"empty region", strings.Replace(good, "/us-east-1/", "//", 1), "region is empty or malformed"},
		{"empty service", strings.Replace(good, "/kms-xks-proxy/", "//", 1), "service is empty or malformed"},
		{"bad terminator", strings.Replace(good, "aws4_request", "aws4_requests", 1), "must end in aws4_request"},
		{"unsorted signed headers", strings.Replace(good, "content-type;host", "host;content-type", 1), "sorted and unique"},
		{"duplicate signed headers", strings.Replace(good, "content-type;host", "host;host", 1), "sorted and unique"},
		{"uppercase signed header", strings.Replace(good, "content-type", "Content-Type", 1), "lowercase header names"},
		{"empty signed header", strings.Replace(good, "content-type;", ";", 1), "lowercase header names"},
		{"no host signed", strings.Replace(good, "content-type;host;", "content-type;", 1), "must include host"},
		{"uppercase signature", strings.Replace(good, sig, strings.ToUpper(sig), 1), "64 lowercase hex digits"},
		{"short signature", strings.Replace(good, sig, sig[:63], 1), "64 lowercase hex digits"},
		{"non-hex signature", strings.Replace(good, sig, "g"+sig[1:], 1), "64 lowercase hex digits"},
		{"too long", good + strings.Repeat(" ", maxAuthorizationLen), "too long"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAuthorization(tc.in)
			checkAuthErr(t, err, tc.msg)
		})
	}
}

func TestAccessKeyIDOf(t *testing.T) {
	t.Parallel()
	base := kmsRequest(t, Credential{testAK2, testSK2})
	if id, err := AccessKeyIDOf(base); err != nil || id != testAK2 {
		t.Fatalf("AccessKeyIDOf = %q, %v", id, err)
	}
	tests := []struct {
		name string
		in   SigV4Input
		msg  string
	}{
		{"missing", withHeader(base, "Authorization"), "missing Authorization header"},
		{"malformed", withHeader(base, "Authorization", "AWS4-HMAC-SHA256 nonsense"), "malformed"},
		{"presigned", SigV4Input{RawQuery: "X-Amz-Signature=abc"}, "presigned query string authentication is not supported"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := AccessKeyIDOf(tc.in)
			checkAuthErr(t, err, tc.msg)
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	in := kmsRequest(b, Credential{testAK2, testSK2})
	v := fixedVerifier(signTime)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(in, allCreds); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSigningKey(b *testing.B) {
	for b.Loop() {
		signingKey(testSK1, "20260314", "us-east-1", testService)
	}
}
