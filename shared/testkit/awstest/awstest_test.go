package awstest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
)

const (
	account = "111122223333"
	other   = "444455556666"
	vpc     = "vpc-0a1b2c3d4e5f60718"
)

func static(c Credential) aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken)
}

func stsClient(s *Server, c Credential, region string) *sts.Client {
	return sts.New(sts.Options{Region: region, Credentials: static(c), BaseEndpoint: aws.String(s.URL), RetryMaxAttempts: 1})
}

func ec2Client(s *Server, c Credential) *ec2.Client {
	return ec2.New(ec2.Options{Region: s.Region, Credentials: static(c), BaseEndpoint: aws.String(s.URL), RetryMaxAttempts: 1})
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func TestGetCallerIdentity(t *testing.T) {
	t.Parallel()
	s := Start(t)
	inst := s.InstanceCredentials(account, "app-role", "i-0123456789abcdef0")
	ctx := context.Background()
	out, err := stsClient(s, inst, s.Region).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	if *out.Arn != "arn:aws:sts::"+account+":assumed-role/app-role/i-0123456789abcdef0" || *out.Account != account {
		t.Fatalf("identity %s %s", *out.Arn, *out.Account)
	}
	if r := s.Requests()[0]; r.Path != "/" || r.Body != "Action=GetCallerIdentity&Version=2011-06-15" || r.Method != http.MethodPost {
		t.Fatalf("request seen as %+v", r)
	}

	wrongSecret := inst
	wrongSecret.SecretAccessKey = strings.Repeat("x", 40)
	wrongToken := inst
	wrongToken.SessionToken = "forged"
	noToken := inst
	noToken.SessionToken = ""
	for _, tc := range []struct {
		name   string
		client *sts.Client
		code   string
	}{
		{"unknown key", stsClient(s, Credential{AccessKeyID: "ASIAUNKNOWNUNKNOWN00", SecretAccessKey: "s", SessionToken: "t"}, s.Region), "InvalidClientTokenId"},
		{"wrong secret", stsClient(s, wrongSecret, s.Region), "SignatureDoesNotMatch"},
		{"wrong session token", stsClient(s, wrongToken, s.Region), "InvalidClientTokenId"},
		{"missing session token", stsClient(s, noToken, s.Region), "InvalidClientTokenId"},
		{"other region", stsClient(s, inst, "eu-west-1"), "SignatureDoesNotMatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
			if apiCode(err) != tc.code {
				t.Fatalf("got %v, want %s", err, tc.code)
			}
		})
	}
	t.Run("stale date", func(t *testing.T) {
		s.SetClock(func() time.Time { return time.Now().Add(20 * time.Minute) })
		defer s.SetClock(time.Now)
		_, err := stsClient(s, inst, s.Region).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if apiCode(err) != "SignatureDoesNotMatch" || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("expired credentials", func(t *testing.T) {
		c := s.InstanceCredentials(account, "app-role", "i-0123456789abcdef1")
		s.ExpireCredentials(c.AccessKeyID)
		_, err := stsClient(s, c, s.Region).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if apiCode(err) != "ExpiredToken" {
			t.Fatalf("got %v", err)
		}
	})
}

// A request signed correctly, then altered in transit, is refused: the
// server checks the signature over method, path, query, signed headers and
// body.
func TestTamperedRequests(t *testing.T) {
	t.Parallel()
	s := Start(t)
	inst := s.InstanceCredentials(account, "app-role", "i-0123456789abcdef0")
	const body = "Action=GetCallerIdentity&Version=2011-06-15"
	sign := func(t *testing.T, url, body string, extra map[string]string) *http.Request {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range extra {
			req.Header.Set(k, v)
		}
		sum := sha256.Sum256([]byte(body))
		creds, _ := static(inst).Retrieve(context.Background())
		if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(sum[:]), "sts", s.Region, time.Now()); err != nil {
			t.Fatal(err)
		}
		return req
	}
	send := func(t *testing.T, req *http.Request) (int, string) {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, out := send(t, sign(t, s.URL+"/", body, map[string]string{"X-Sovkeys-Server-ID": "a"})); code != 200 || !strings.Contains(out, "<Arn>") {
		t.Fatalf("untampered: %d %s", code, out)
	}
	for _, tc := range []struct {
		name   string
		tamper func(*http.Request)
	}{
		{"body", func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader("Action=GetCallerIdentity&Version=2011-06-16"))
		}},
		{"signed header", func(r *http.Request) { r.Header.Set("X-Sovkeys-Server-ID", "b") }},
		{"path", func(r *http.Request) { r.URL.Path = "/other" }},
		{"query", func(r *http.Request) { r.URL.RawQuery = "x=1" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := sign(t, s.URL+"/", body, map[string]string{"X-Sovkeys-Server-ID": "a"})
			tc.tamper(req)
			code, out := send(t, req)
			if code != http.StatusForbidden || !strings.Contains(out, "<Code>SignatureDoesNotMatch</Code>") || !strings.Contains(out, "<ErrorResponse") {
				t.Fatalf("%d %s", code, out)
			}
		})
	}
}

func TestAssumeRoleAndDescribeInstances(t *testing.T) {
	t.Parallel()
	s := Start(t)
	ctx := context.Background()
	self := s.AddUser("999988887777", "sovkeys")
	selfARN := "arn:aws:iam::999988887777:user/sovkeys"
	roleARN := "arn:aws:iam::" + account + ":role/sovkeys-reader"
	s.AddRole(Role{ARN: roleARN, Trusted: []string{selfARN}, ExternalID: vpc, DescribeInstances: true})
	s.AddRole(Role{ARN: "arn:aws:iam::" + account + ":role/no-ec2", Trusted: []string{selfARN}})
	s.AddInstance(Instance{ID: "i-0123456789abcdef0", Account: account, State: "running", VPCID: vpc, PrivateIP: "10.0.1.5",
		ProfileARN: "arn:aws:iam::" + account + ":instance-profile/app-role",
		Interfaces: []NetworkInterface{{VPCID: vpc, PrivateIPs: []string{"10.0.2.7", "10.0.2.8"}, IPv6: []string{"2001:db8::7"}}}})
	s.AddInstance(Instance{ID: "i-0999999999abcdef0", Account: other, State: "running", VPCID: "vpc-other"})

	assume := func(role, ext string) (*sts.AssumeRoleOutput, error) {
		in := &sts.AssumeRoleInput{RoleArn: aws.String(role), RoleSessionName: aws.String("sovkeys-test")}
		if ext != "" {
			in.ExternalId = aws.String(ext)
		}
		return stsClient(s, self, s.Region).AssumeRole(ctx, in)
	}
	for _, tc := range []struct{ name, role, ext string }{
		{"wrong external id", roleARN, "vpc-wrong"},
		{"no external id", roleARN, ""},
		{"unknown role", "arn:aws:iam::" + account + ":role/nope", vpc},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := assume(tc.role, tc.ext); apiCode(err) != "AccessDenied" {
				t.Fatalf("got %v", err)
			}
		})
	}
	t.Run("untrusted principal", func(t *testing.T) {
		stranger := s.AddUser("999988887777", "stranger")
		_, err := stsClient(s, stranger, s.Region).AssumeRole(ctx, &sts.AssumeRoleInput{
			RoleArn: aws.String(roleARN), RoleSessionName: aws.String("x1"), ExternalId: aws.String(vpc)})
		if apiCode(err) != "AccessDenied" {
			t.Fatalf("got %v", err)
		}
	})

	out, err := assume(roleARN, vpc)
	if err != nil {
		t.Fatal(err)
	}
	c := Credential{AccessKeyID: *out.Credentials.AccessKeyId, SecretAccessKey: *out.Credentials.SecretAccessKey, SessionToken: *out.Credentials.SessionToken}
	if !strings.HasPrefix(c.AccessKeyID, "ASIA") || c.SessionToken == "" || out.Credentials.Expiration.Before(time.Now()) {
		t.Fatalf("credentials %+v", out.Credentials)
	}
	d, err := ec2Client(s, c).DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{"i-0123456789abcdef0"}})
	if err != nil {
		t.Fatal(err)
	}
	in := d.Reservations[0].Instances[0]
	if *in.InstanceId != "i-0123456789abcdef0" || in.State.Name != "running" || *in.VpcId != vpc || *in.PrivateIpAddress != "10.0.1.5" ||
		*in.IamInstanceProfile.Arn != "arn:aws:iam::"+account+":instance-profile/app-role" || len(in.NetworkInterfaces) != 2 ||
		*in.NetworkInterfaces[1].PrivateIpAddresses[1].PrivateIpAddress != "10.0.2.8" || *in.NetworkInterfaces[1].Ipv6Addresses[0].Ipv6Address != "2001:db8::7" {
		t.Fatalf("instance %+v", in)
	}
	if r := s.Requests(); r[len(r)-1].Header.Get("X-Amz-Security-Token") != c.SessionToken {
		t.Fatal("DescribeInstances was not sent with the session token")
	}

	for _, tc := range []struct {
		name, id, code string
		creds          Credential
	}{
		{"instance of another account", "i-0999999999abcdef0", "InvalidInstanceID.NotFound", c},
		{"unknown instance", "i-0000000000abcdef0", "InvalidInstanceID.NotFound", c},
		{"malformed id", "bogus", "InvalidInstanceID.Malformed", c},
		{"instance credentials cannot describe", "i-0123456789abcdef0", "UnauthorizedOperation", s.InstanceCredentials(account, "app-role", "i-0123456789abcdef0")},
		{"signed with another secret", "i-0123456789abcdef0", "AuthFailure", Credential{AccessKeyID: c.AccessKeyID, SecretAccessKey: "wrong", SessionToken: c.SessionToken}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ec2Client(s, tc.creds).DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{tc.id}})
			if apiCode(err) != tc.code {
				t.Fatalf("got %v, want %s", err, tc.code)
			}
		})
	}
	t.Run("role without ec2 permission", func(t *testing.T) {
		out, err := assume("arn:aws:iam::"+account+":role/no-ec2", "")
		if err != nil {
			t.Fatal(err)
		}
		nc := Credential{AccessKeyID: *out.Credentials.AccessKeyId, SecretAccessKey: *out.Credentials.SecretAccessKey, SessionToken: *out.Credentials.SessionToken}
		_, err = ec2Client(s, nc).DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{"i-0123456789abcdef0"}})
		if apiCode(err) != "UnauthorizedOperation" {
			t.Fatalf("got %v", err)
		}
	})
}

// A stalled action never answers; the caller's deadline ends the call.
func TestStall(t *testing.T) {
	t.Parallel()
	s := Start(t)
	inst := s.InstanceCredentials(account, "app-role", "i-0123456789abcdef0")
	s.Stall("GetCallerIdentity", true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := stsClient(s, inst, s.Region).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	s.Stall("GetCallerIdentity", false)
	if _, err := stsClient(s, inst, s.Region).GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{}); err != nil {
		t.Fatal(err)
	}
}
