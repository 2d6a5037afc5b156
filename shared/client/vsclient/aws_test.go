package vsclient

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/testkit/awstest"
)

// The identity the client signs verifies at STS when the request is
// rebuilt from nothing but the service's configuration and the identity's
// headers, as authn does.
func TestSignedIdentityVerifiesAtSTS(t *testing.T) {
	t.Parallel()
	s := awstest.Start(t)
	c := s.InstanceCredentials("111122223333", "app-role", "i-0123456789abcdef0")
	creds := aws.Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken}
	id, err := SignAWSIdentity(context.Background(), creds, s.URL, s.Region, "prod", "vpc-0abc", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if id.SecurityToken != c.SessionToken || !strings.Contains(id.Authorization, "SignedHeaders=content-length;content-type;host;x-amz-date;x-amz-security-token;x-sovkeys-server-id") {
		t.Fatalf("identity %+v", id)
	}
	send := func(serverID string) int {
		req, _ := http.NewRequest(http.MethodPost, s.URL+"/", strings.NewReader(vs.STSGetCallerIdentityBody))
		req.Header.Set("Content-Type", vs.STSContentType)
		req.Header.Set("Authorization", id.Authorization)
		req.Header.Set("X-Amz-Date", id.AmzDate)
		req.Header.Set("X-Amz-Security-Token", id.SecurityToken)
		req.Header.Set(vs.HeaderServerID, serverID)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if code := send("prod"); code != http.StatusOK {
		t.Fatalf("rebuilt request: %d", code)
	}
	if code := send("other"); code != http.StatusForbidden {
		t.Fatalf("rebuilt request for another server id: %d", code)
	}
}

func TestIdentityHeaderReuse(t *testing.T) {
	t.Parallel()
	now := time.Now()
	key := atomic.Value{}
	key.Store("ASIAAAAAAAAAAAAAAAA1")
	a := &AWSInstance{
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: key.Load().(string), SecretAccessKey: "s", SessionToken: "t"}, nil
		}),
		STSEndpoint: "https://sts.eu-west-1.amazonaws.com", Region: "eu-west-1", ServerID: "prod", Tenant: "vpc-0abc",
		Now: func() time.Time { return now },
	}
	ctx := context.Background()
	h1, err := a.Header(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h2, _ := a.Header(ctx); h2 != h1 {
		t.Fatal("not reused within the reuse period")
	}
	now = now.Add(DefaultAWSReuse)
	h3, _ := a.Header(ctx)
	if h3 == h1 {
		t.Fatal("reused past the reuse period")
	}
	key.Store("ASIAAAAAAAAAAAAAAAA2")
	if h4, _ := a.Header(ctx); h4 == h3 {
		t.Fatal("reused after the credentials changed")
	}
	id, err := vs.ParseAWSIdentity(h3)
	if err != nil || id.Tenant != "vpc-0abc" || id.ServerID != "prod" {
		t.Fatalf("header %+v %v", id, err)
	}
}

func TestAWSTransportAddsHeader(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get(vs.HeaderAWSIdentity))
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	tr := &awsTransport{base: http.DefaultTransport, id: &AWSInstance{
		Credentials: credentials.NewStaticCredentialsProvider("ASIAAAAAAAAAAAAAAAA1", "s", "t"),
		STSEndpoint: "https://sts.eu-west-1.amazonaws.com", Region: "eu-west-1", ServerID: "prod",
	}}
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, err := vs.ParseAWSIdentity(got.Load().(string)); err != nil {
		t.Fatalf("server saw %v", err)
	}
	if req.Header.Get(vs.HeaderAWSIdentity) != "" {
		t.Fatal("the caller's request was modified")
	}
}

func TestNewAWSRefuses(t *testing.T) {
	t.Parallel()
	ok := func() *AWSInstance {
		return &AWSInstance{STSEndpoint: "https://sts.eu-west-1.amazonaws.com", Region: "eu-west-1", ServerID: "prod"}
	}
	for name, id := range map[string]*AWSInstance{
		"no identity":  nil,
		"server id":    func() *AWSInstance { i := ok(); i.ServerID = "a b"; return i }(),
		"sts endpoint": func() *AWSInstance { i := ok(); i.STSEndpoint = "sts.example"; return i }(),
		"region":       func() *AWSInstance { i := ok(); i.Region = ""; return i }(),
	} {
		if _, err := NewAWS(AWSConfig{BaseURL: "https://gw", Instance: id}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// An instance boots, proves its identity with its instance profile (the
// credentials never leave it) and unlocks its volume.
func ExampleNewAWS() {
	signingKeyDER := []byte{} // pinned at enrolment: GET /v1/public-signing-key
	c, err := NewAWS(AWSConfig{
		BaseURL: "https://keys.example.com", SigningKeyDER: signingKeyDER,
		Instance: &AWSInstance{
			// Credentials nil: the instance profile, through IMDS.
			STSEndpoint: "https://sts.eu-west-1.amazonaws.com", Region: "eu-west-1",
			ServerID: "acme-prod", Tenant: "vpc-0123456789abcdef0",
		},
	})
	if err != nil {
		return
	}
	secret, encrypted, err := c.GenerateSecret(context.Background(), "i-0123456789abcdef0", "volume-uuid")
	_, _, _ = secret, encrypted, err
}
