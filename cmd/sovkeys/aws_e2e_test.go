package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/awstest"
)

// The test node's authn verifies AWS identities against a loopback STS+EC2
// (shared/testkit/awstest) that checks every SigV4 signature it receives; its
// gateway trusts 127.0.0.1 as a proxy for X-Forwarded-For. startNode
// passes this environment to the standalone (awsTestEnv).
const (
	e2eServerID    = "sovkeys-e2e"
	e2eAccount     = "123456789012"
	e2eSelfAccount = "999988887777"
	e2eVPCIDHeader = "X-Sovkeys-Test-Vpc-Id"
)

// awsWorld is the loopback AWS of the test binary and the environment that
// points the node at it.
type awsWorld struct {
	srv *awstest.Server
	env map[string]string
}

// awsFake is started by the first startNode and lives as long as the test
// binary (a restarted node reuses it).
var awsFake *awsWorld

func awsTestEnv() map[string]string {
	if awsFake == nil {
		s := awstest.New()
		self := s.AddUser(e2eSelfAccount, "sovkeys")
		awsFake = &awsWorld{srv: s, env: map[string]string{
			"SOVKEYS_SERVER_ID": e2eServerID, "SOVKEYS_AWS_REGION": s.Region,
			"SOVKEYS_STS_ENDPOINT": s.URL, "SOVKEYS_EC2_ENDPOINT": s.URL,
			"AWS_ACCESS_KEY_ID": self.AccessKeyID, "AWS_SECRET_ACCESS_KEY": self.SecretAccessKey,
			"SOVKEYS_TRUSTED_PROXY_CIDRS": "127.0.0.1/32", "SOVKEYS_SOURCE_IP_HEADER": "X-Forwarded-For",
			"SOVKEYS_VPC_ID_HEADER": e2eVPCIDHeader,
		}}
	}
	return awsFake.env
}

// awsTenant registers, in the loopback AWS and with the CLI, a tenant whose
// role trusts sovkeys with the tenant id as external id.
func awsTenant(t *testing.T, n *node, vpc string, extra ...string) {
	t.Helper()
	role := "arn:aws:iam::" + e2eAccount + ":role/sovkeys-" + vpc
	awsFake.srv.AddRole(awstest.Role{ARN: role, Trusted: []string{"arn:aws:iam::" + e2eSelfAccount + ":user/sovkeys"},
		ExternalID: vpc, DescribeInstances: true})
	n.cli(t, nil, append([]string{"tenant", "create", "--id", vpc, "--auth", "aws", "--account", e2eAccount, "--role-arn", role}, extra...)...)
}

// awsInstance adds a running instance with instance profile role and
// returns a client holding its instance-profile credentials.
func awsInstance(t *testing.T, n *node, vpc, id, ip, role string, mutate ...func(*awstest.Instance)) *vsclient.Client {
	t.Helper()
	in := awstest.Instance{ID: id, Account: e2eAccount, State: "running", VPCID: vpc, PrivateIP: ip,
		ProfileARN: "arn:aws:iam::" + e2eAccount + ":instance-profile/" + role}
	for _, m := range mutate {
		m(&in)
	}
	awsFake.srv.AddInstance(in)
	return n.awsClient(t, awsFake.srv.InstanceCredentials(e2eAccount, role, id), vpc, e2eServerID)
}

func (n *node) awsClient(t *testing.T, c awstest.Credential, tenant, serverID string) *vsclient.Client {
	t.Helper()
	der, err := vsclient.FetchSigningKey(context.Background(), n.http, n.gateway)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := vsclient.NewAWS(vsclient.AWSConfig{
		BaseURL: n.gateway, CAFile: filepath.Join(n.dir, "tls", "ca.pem"), SigningKeyDER: der,
		Instance: &vsclient.AWSInstance{
			Credentials: credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken),
			STSEndpoint: awsFake.srv.URL, Region: awsFake.srv.Region, ServerID: serverID, Tenant: tenant,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cl.RSABits = 2048
	return cl
}

// withHeader makes every call of c carry a header (as a proxy would add).
func withHeader(c *vsclient.Client, k, v string) *vsclient.Client {
	cp := *c
	cp.HTTP = &http.Client{Timeout: c.HTTP.Timeout, Transport: headerRT{base: c.HTTP.Transport, k: k, v: v}}
	return &cp
}

type headerRT struct {
	base http.RoundTripper
	k, v string
}

func (h headerRT) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.k, h.v)
	return h.base.RoundTrip(r)
}

func TestAWSInstanceIdentity(t *testing.T) {
	n := testNode
	ctx := context.Background()
	const vpc = "vpc-0e2e0000000000001"
	awsTenant(t, n, vpc)
	before := len(awsFake.srv.Requests())
	c := awsInstance(t, n, vpc, "i-0e2e0000000000001", "10.0.1.5", "app-role")

	var secret, enc []byte
	var err error
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error { // the tenant reaches authn's cache asynchronously
		secret, enc, err = c.GenerateSecret(ctx, "i-0e2e0000000000001", "vol-1")
		return err
	})
	got, err := c.DecryptSecret(ctx, "i-0e2e0000000000001", "vol-1", enc)
	if err != nil || !bytes.Equal(got, secret) || len(secret) != 32 {
		t.Fatalf("decrypt: %v", err)
	}
	// Every call the mesh made to AWS was signed correctly (awstest
	// verifies each signature) and went to the configured endpoint with the
	// fixed request.
	calls := map[string]int{}
	for _, r := range awsFake.srv.Requests()[before:] {
		if r.Error != "" {
			t.Fatalf("loopback AWS refused %s: %s", r.Action, r.Error)
		}
		if r.Action == "GetCallerIdentity" && (r.Path != "/" || r.Body != "Action=GetCallerIdentity&Version=2011-06-15") {
			t.Fatalf("GetCallerIdentity sent as %s %q", r.Path, r.Body)
		}
		calls[r.Action]++
	}
	if calls["GetCallerIdentity"] < 1 || calls["AssumeRole"] != 1 || calls["DescribeInstances"] < 1 {
		t.Fatalf("calls %v", calls)
	}

	stopped := awsInstance(t, n, vpc, "i-0e2e0000000000002", "10.0.1.6", "app-role", func(in *awstest.Instance) { in.State = "stopped" })
	otherVPC := awsInstance(t, n, vpc, "i-0e2e0000000000003", "10.0.1.7", "app-role", func(in *awstest.Instance) { in.VPCID = "vpc-0e2e00000000000ff" })
	wrongRole := awsInstance(t, n, vpc, "i-0e2e0000000000004", "10.0.1.8", "app-role", func(in *awstest.Instance) {
		in.ProfileARN = "arn:aws:iam::" + e2eAccount + ":instance-profile/other-role"
	})
	otherDeployment := n.awsClient(t, awsFake.srv.InstanceCredentials(e2eAccount, "app-role", "i-0e2e0000000000001"), vpc, "another-deployment")
	for _, tc := range []struct {
		name   string
		call   func() error
		status int
		reason string
	}{
		{"stopped instance", func() error { _, _, err := stopped.GenerateSecret(ctx, "i-0e2e0000000000002", "v"); return err }, 403, "not running"},
		{"instance in another vpc", func() error { _, _, err := otherVPC.GenerateSecret(ctx, "i-0e2e0000000000003", "v"); return err }, 403, "not in tenant vpc"},
		{"profile of another role", func() error { _, _, err := wrongRole.GenerateSecret(ctx, "i-0e2e0000000000004", "v"); return err }, 403, "instance profile"},
		{"path names another instance", func() error { _, err := c.DecryptSecret(ctx, "i-0e2e0000000000002", "vol-1", enc); return err }, 403, "may not act for"},
		{"identity signed for another deployment", func() error { _, _, err := otherDeployment.GenerateSecret(ctx, "i-0e2e0000000000001", "v"); return err }, 401, "another-deployment"},
		{"proxy names another vpc", func() error {
			_, _, err := withHeader(c, e2eVPCIDHeader, "vpc-0e2e00000000000ff").GenerateSecret(ctx, "i-0e2e0000000000001", "v")
			return err
		}, 403, "came through vpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if vsStatus(err) != tc.status || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("got %v, want %d with %q", err, tc.status, tc.reason)
			}
		})
	}

	// The tenant kill switch stops AWS-identified callers as it stops
	// certificate-identified ones.
	t.Run("tenant kill switch", func(t *testing.T) {
		n.cli(t, nil, "killswitch", "engage", "--tenant", vpc, "--reason", "aws test")
		testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			if _, _, err := c.GenerateSecret(ctx, "i-0e2e0000000000001", "v-kill"); vsStatus(err) != 403 || !strings.Contains(err.Error(), "kill switch") {
				return fmt.Errorf("engaged: %v", err)
			}
			return nil
		})
		n.cli(t, nil, "killswitch", "release", "--tenant", vpc)
		testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			_, _, err := c.GenerateSecret(ctx, "i-0e2e0000000000001", "v-kill")
			return err
		})
	})

	t.Run("denials are audited without credentials", func(t *testing.T) {
		_, js := operatorJS(t)
		stream, err := js.Stream(ctx, shared.StreamAudit)
		if err != nil {
			t.Fatal(err)
		}
		cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{shared.SubjectAuditPrefix + "*." + shared.AuditKindTenant + "." + shared.ScopeToken(vpc)}})
		if err != nil {
			t.Fatal(err)
		}
		var denied bool
		testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			batch, err := cons.FetchNoWait(100)
			if err != nil {
				return err
			}
			for m := range batch.Messages() {
				if bytes.Contains(m.Data(), []byte("Signature=")) || bytes.Contains(m.Data(), []byte("IQoJb3JpZ2lu")) {
					t.Fatalf("audit event carries identity material: %s", m.Data())
				}
				ev, err := shared.UnmarshalAuditEvent(m.Data())
				if err != nil {
					t.Fatal(err)
				}
				if ev.CallerType == "aws" && ev.Result == shared.ResultDenied && ev.CallerID == "i-0e2e0000000000002" &&
					strings.Contains(ev.Reason, "not running") {
					denied = true
				}
			}
			if !denied {
				return fmt.Errorf("no denial of the stopped instance in the tenant's audit")
			}
			return nil
		})
	})
}

// With --check-source-ip the caller's address must be one of the
// instance's; behind a trusted proxy it is the X-Forwarded-For last hop.
func TestAWSInstanceIdentitySourceIP(t *testing.T) {
	n := testNode
	ctx := context.Background()
	const vpc = "vpc-0e2e0000000000002"
	awsTenant(t, n, vpc, "--check-source-ip")
	c := awsInstance(t, n, vpc, "i-0e2e0000000000011", "10.0.3.9", "app-role")
	viaProxy := withHeader(c, "X-Forwarded-For", "198.51.100.7, 10.0.3.9")
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, _, err := viaProxy.GenerateSecret(ctx, "i-0e2e0000000000011", "vol-1")
		return err
	})
	_, _, err := c.GenerateSecret(ctx, "i-0e2e0000000000011", "vol-2") // seen from 127.0.0.1
	if vsStatus(err) != 403 || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("direct call from another address: %v", err)
	}
	_, _, err = withHeader(c, "X-Forwarded-For", "10.0.3.10").GenerateSecret(ctx, "i-0e2e0000000000011", "vol-2")
	if vsStatus(err) != 403 {
		t.Fatalf("proxy reporting another address: %v", err)
	}
}

// STS that never answers: the call fails with a clear 503 from authn
// (within its AWS budget, before the gateway's deadline), and the service
// recovers when STS does.
func TestAWSInstanceIdentityTimeout(t *testing.T) {
	n := testNode
	ctx := context.Background()
	const vpc = "vpc-0e2e0000000000003"
	awsTenant(t, n, vpc)
	c := awsInstance(t, n, vpc, "i-0e2e0000000000021", "10.0.4.9", "app-role")
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, _, err := c.GenerateSecret(ctx, "i-0e2e0000000000021", "vol-1")
		return err
	})
	awsFake.srv.Stall("DescribeInstances", true)
	defer awsFake.srv.Stall("DescribeInstances", false)
	fresh := awsInstance(t, n, vpc, "i-0e2e0000000000022", "10.0.4.10", "app-role") // not cached yet
	_, _, err := fresh.GenerateSecret(ctx, "i-0e2e0000000000022", "vol-1")
	if vsStatus(err) != http.StatusServiceUnavailable || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("got %v", err)
	}
	awsFake.srv.Stall("DescribeInstances", false)
	if _, _, err := fresh.GenerateSecret(ctx, "i-0e2e0000000000022", "vol-1"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}
