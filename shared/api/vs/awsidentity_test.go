package vs

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

func TestAWSIdentityRoundTrip(t *testing.T) {
	t.Parallel()
	in := AWSIdentity{Version: AWSIdentityVersion, Tenant: "vpc-0abc", Authorization: "AWS4-HMAC-SHA256 Credential=x",
		AmzDate: "20261123T120000Z", SecurityToken: "tok", ServerID: "prod-eu"}
	out, err := ParseAWSIdentity(in.Encode())
	if err != nil || out != in {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
}

func TestParseAWSIdentityRefuses(t *testing.T) {
	t.Parallel()
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	good := `"authorization":"a","x_amz_date":"d","server_id":"s"`
	for name, h := range map[string]string{
		"not base64":      "!!",
		"not json":        enc("nope"),
		"unknown field":   enc(`{"v":1,` + good + `,"url":"http://x"}`),
		"body field":      enc(`{"v":1,` + good + `,"body":"Action=AssumeRole"}`),
		"trailing data":   enc(`{"v":1,` + good + `}{}`),
		"version":         enc(`{"v":2,` + good + `}`),
		"missing field":   enc(`{"v":1,"authorization":"a","x_amz_date":"d"}`),
		"bad server id":   enc(`{"v":1,"authorization":"a","x_amz_date":"d","server_id":"a b"}`),
		"bad tenant":      enc(`{"v":1,` + good + `,"tenant":"vpc/x"}`),
		"newline in auth": enc(`{"v":1,"authorization":"a\r\nX: y","x_amz_date":"d","server_id":"s"}`),
		"too long":        strings.Repeat("A", MaxAWSIdentityBytes+4),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseAWSIdentity(h)
			if !errors.Is(err, ErrAWSIdentity) || shared.CodeOf(err) != shared.CodeAuthenticationFailed {
				t.Fatalf("got %v", err)
			}
		})
	}
}

func TestSTSURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"https://sts.eu-west-1.amazonaws.com":    "https://sts.eu-west-1.amazonaws.com/",
		"http://127.0.0.1:9000/":                 "http://127.0.0.1:9000/",
		"https://vpce.example/sts":               "https://vpce.example/sts",
		"ftp://sts":                              "",
		"https://user@sts.example/":              "",
		"https://sts.example/?Action=AssumeRole": "",
		"sts.example":                            "",
	} {
		u, err := STSURL(in)
		if got := ""; err == nil {
			got = u.String()
			if got != want {
				t.Errorf("%s: %s, want %s", in, got, want)
			}
		} else if want != "" {
			t.Errorf("%s: %v", in, err)
		}
	}
}

// FuzzParseAWSIdentity: no input panics, and whatever parses re-encodes to
// an identity that parses to the same value.
func FuzzParseAWSIdentity(f *testing.F) {
	f.Add(AWSIdentity{Version: 1, Authorization: "a", AmzDate: "d", ServerID: "s"}.Encode())
	f.Add("")
	f.Add("e30=")
	f.Fuzz(func(t *testing.T, h string) {
		a, err := ParseAWSIdentity(h)
		if err != nil {
			return
		}
		b, err := ParseAWSIdentity(a.Encode())
		if err != nil || a != b {
			t.Fatalf("re-encoding changed %+v to %+v (%v)", a, b, err)
		}
	})
}
