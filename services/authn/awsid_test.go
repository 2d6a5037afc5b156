package authn

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/testkit/awstest"
)

const (
	testAccount  = "111122223333"
	otherAccount = "222233334444"
	selfAccount  = "999988887777"
	testVPC      = "vpc-0a1b2c3d4e5f60718"
	testServerID = "sovkeys-test"
	testRole     = "app-role"
	testInstance = "i-0123456789abcdef0"
)

var testRoleARN = "arn:aws:iam::" + testAccount + ":role/sovkeys-reader"

// fakeClock is a settable clock, starting at the real time.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// awsFixture is a loopback STS+EC2 with one tenant whose instances run in
// testVPC with instance profile testRole, and a verifier configured for it.
type awsFixture struct {
	aws     *awstest.Server
	v       *awsVerifier
	clock   *fakeClock
	tenants map[string]registry.Tenant
}

func staticProvider(c awstest.Credential) aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken)
}

func newAWSFixture(t *testing.T, cfg AWSConfig) *awsFixture {
	t.Helper()
	s := awstest.Start(t)
	self := s.AddUser(selfAccount, "sovkeys")
	s.AddRole(awstest.Role{ARN: testRoleARN, Trusted: []string{"arn:aws:iam::" + selfAccount + ":user/sovkeys"},
		ExternalID: testVPC, DescribeInstances: true})
	s.AddInstance(awstest.Instance{ID: testInstance, Account: testAccount, State: "running", VPCID: testVPC, PrivateIP: "10.0.1.5",
		ProfileARN: "arn:aws:iam::" + testAccount + ":instance-profile/" + testRole,
		Interfaces: []awstest.NetworkInterface{{VPCID: testVPC, PrivateIPs: []string{"10.0.2.7"}}}})
	if cfg.ServerID == "" {
		cfg = AWSConfig{ServerID: testServerID, Timeout: 2 * time.Second, CacheTTL: time.Minute, CacheSize: 100}
	}
	cfg.Region, cfg.STSEndpoint, cfg.EC2Endpoint = s.Region, s.URL, s.URL
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now()}
	v, err := newAWSVerifier(context.Background(), cfg, 5*time.Minute, Deps{AWSCredentials: staticProvider(self)}, clock.now,
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return &awsFixture{aws: s, v: v, clock: clock, tenants: map[string]registry.Tenant{
		testVPC: {ID: testVPC, EKTName: testVPC, Pool: "default", Account: testAccount, RoleARN: testRoleARN,
			AuthMethods: []string{"aws"}, Status: registry.TenantEnabled},
	}}
}

func (f *awsFixture) lookup(id string) (registry.Tenant, bool) {
	tn, ok := f.tenants[id]
	return tn, ok
}

// sign makes the identity an instance would send.
func (f *awsFixture) sign(t *testing.T, creds awstest.Credential, serverID, tenant string, at time.Time) string {
	t.Helper()
	c, _ := staticProvider(creds).Retrieve(context.Background())
	id, err := vsclient.SignAWSIdentity(context.Background(), c, f.aws.URL, f.aws.Region, serverID, tenant, at)
	if err != nil {
		t.Fatal(err)
	}
	return id.Encode()
}

// signRaw signs an arbitrary request, for identities no honest client makes.
func signRaw(t *testing.T, creds awstest.Credential, url, body, region string, hdr map[string]string, at time.Time) vs.AWSIdentity {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", vs.STSContentType)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	sum := sha256.Sum256([]byte(body))
	c, _ := staticProvider(creds).Retrieve(context.Background())
	if err := v4.NewSigner().SignHTTP(context.Background(), c, req, hex.EncodeToString(sum[:]), "sts", region, at); err != nil {
		t.Fatal(err)
	}
	return vs.AWSIdentity{Version: vs.AWSIdentityVersion, Tenant: testVPC, Authorization: req.Header.Get("Authorization"),
		AmzDate: req.Header.Get("X-Amz-Date"), SecurityToken: req.Header.Get("X-Amz-Security-Token"), ServerID: hdr[vs.HeaderServerID]}
}

func envFor(header, instance, sourceIP string) *shared.Envelope {
	return &shared.Envelope{ID: "r1", API: shared.APIVSGenerate, Evidence: shared.Evidence{
		InstanceID: instance, AWSIdentity: header, SourceIP: sourceIP,
		// Whatever the client put in its own request line and headers is
		// never used to build the STS request.
		Host: "evil.example", Path: "/v1/encryption/" + instance + "/generate-secret",
		Header: map[string][]string{"Host": {"evil.example"}, "X-Forwarded-Host": {"evil.example"}},
	}}
}

func (f *awsFixture) verify(env *shared.Envelope) (registry.Tenant, *shared.AuditEvent, error) {
	ev := &shared.AuditEvent{}
	tn, err := f.v.verify(context.Background(), env, f.lookup, ev)
	return tn, ev, err
}

func wantAWSErr(t *testing.T, err error, kind error, code shared.Code) {
	t.Helper()
	if !errors.Is(err, kind) || shared.CodeOf(err) != code {
		t.Fatalf("got %v (code %s), want %v with code %s", err, shared.CodeOf(err), kind, code)
	}
	if strings.Contains(shared.MessageOf(err), "Signature=") || strings.Contains(shared.MessageOf(err), "IQoJ") {
		t.Fatalf("error message leaks credential material: %s", shared.MessageOf(err))
	}
}

func TestAWSIdentityVerifies(t *testing.T) {
	t.Parallel()
	f := newAWSFixture(t, AWSConfig{})
	inst := f.aws.InstanceCredentials(testAccount, testRole, testInstance)
	tn, ev, err := f.verify(envFor(f.sign(t, inst, testServerID, testVPC, time.Now()), testInstance, "10.0.1.5"))
	if err != nil {
		t.Fatal(err)
	}
	if tn.ID != testVPC || ev.Scope != testVPC || ev.CallerID != testInstance ||
		ev.Principal != "arn:aws:sts::"+testAccount+":assumed-role/"+testRole+"/"+testInstance {
		t.Fatalf("tenant %q, event %+v", tn.ID, ev)
	}
	byAction := map[string]awstest.Request{}
	for _, r := range f.aws.Requests() {
		if r.Error != "" {
			t.Fatalf("awstest refused %s: %s", r.Action, r.Error)
		}
		byAction[r.Action] = r
	}
	gci := byAction["GetCallerIdentity"]
	if gci.Path != "/" || gci.Body != vs.STSGetCallerIdentityBody || gci.ContentType != vs.STSContentType ||
		gci.Header.Get(vs.HeaderServerID) != testServerID || gci.AccessKeyID != inst.AccessKeyID || gci.Host != strings.TrimPrefix(f.aws.URL, "http://") {
		t.Fatalf("GetCallerIdentity was sent as %+v", gci)
	}
	ar := byAction["AssumeRole"]
	if !strings.Contains(ar.Body, "ExternalId="+testVPC) || !strings.Contains(ar.Body, "RoleSessionName=sovkeys-"+testServerID) || strings.HasPrefix(ar.AccessKeyID, "ASIA") {
		t.Fatalf("AssumeRole was sent as %+v", ar)
	}
	if di := byAction["DescribeInstances"]; !strings.Contains(di.Body, "InstanceId.1="+testInstance) || di.Header.Get("X-Amz-Security-Token") == "" {
		t.Fatalf("DescribeInstances was sent as %+v", di)
	}
}

// authn rebuilds the STS request from its configuration; nothing the
// client controls but the signature headers reaches STS, and identities
// that cannot verify here are refused before any AWS call.
func TestAWSIdentityRebuild(t *testing.T) {
	t.Parallel()
	f := newAWSFixture(t, AWSConfig{})
	inst := f.aws.InstanceCredentials(testAccount, testRole, testInstance)
	evil := awstest.Start(t)
	now := time.Now()
	sid := map[string]string{vs.HeaderServerID: testServerID}
	withServer := func(id vs.AWSIdentity, server string) string { id.ServerID = server; return id.Encode() }
	for _, tc := range []struct {
		name   string
		header string
		kind   error
		code   shared.Code
		calls  bool // whether STS is reached
	}{
		{"signed for another url", signRaw(t, inst, evil.URL+"/", vs.STSGetCallerIdentityBody, f.aws.Region, sid, now).Encode(),
			ErrAWSRejected, shared.CodeAuthenticationFailed, true},
		{"signed for another path", signRaw(t, inst, f.aws.URL+"/x", vs.STSGetCallerIdentityBody, f.aws.Region, sid, now).Encode(),
			ErrAWSRejected, shared.CodeAuthenticationFailed, true},
		{"signed another body", signRaw(t, inst, f.aws.URL+"/", "Action=AssumeRole&Version=2011-06-15", f.aws.Region, sid, now).Encode(),
			ErrAWSRejected, shared.CodeAuthenticationFailed, true},
		{"other deployment's identity replayed", f.sign(t, inst, "other-deployment", testVPC, now),
			ErrAWSServerID, shared.CodeAuthenticationFailed, false},
		{"other deployment's signature claiming our id",
			withServer(signRaw(t, inst, f.aws.URL+"/", vs.STSGetCallerIdentityBody, f.aws.Region, map[string]string{vs.HeaderServerID: "other"}, now), testServerID),
			ErrAWSRejected, shared.CodeAuthenticationFailed, true},
		{"server id not signed", withServer(signRaw(t, inst, f.aws.URL+"/", vs.STSGetCallerIdentityBody, f.aws.Region, nil, now), testServerID),
			ErrAWSMalformed, shared.CodeAuthenticationFailed, false},
		{"a header we do not send is signed",
			signRaw(t, inst, f.aws.URL+"/", vs.STSGetCallerIdentityBody, f.aws.Region, map[string]string{vs.HeaderServerID: testServerID, "X-Extra": "1"}, now).Encode(),
			ErrAWSMalformed, shared.CodeAuthenticationFailed, false},
		{"expired date", f.sign(t, inst, testServerID, testVPC, now.Add(-6*time.Minute)), ErrAWSStale, shared.CodeAuthenticationFailed, false},
		{"future date", f.sign(t, inst, testServerID, testVPC, now.Add(6*time.Minute)), ErrAWSStale, shared.CodeAuthenticationFailed, false},
		{"other region", signRaw(t, inst, f.aws.URL+"/", vs.STSGetCallerIdentityBody, "eu-west-1", sid, now).Encode(),
			ErrAWSMalformed, shared.CodeAuthenticationFailed, false},
		{"long-term key without session token", f.sign(t, f.aws.AddUser(testAccount, "bob"), testServerID, testVPC, now),
			ErrAWSMalformed, shared.CodeAuthenticationFailed, false},
		{"not base64", "{not base64}", ErrAWSMalformed, shared.CodeAuthenticationFailed, false},
		{"unknown field (a url)", encodeRaw(`{"v":1,"authorization":"a","x_amz_date":"d","server_id":"s","url":"http://evil/"}`),
			ErrAWSMalformed, shared.CodeAuthenticationFailed, false},
		{"header injection", withCRLF(f.sign(t, inst, testServerID, testVPC, now)), ErrAWSMalformed, shared.CodeAuthenticationFailed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.aws.Requests())
			_, _, err := f.verify(envFor(tc.header, testInstance, "10.0.1.5"))
			wantAWSErr(t, err, tc.kind, tc.code)
			if called := len(f.aws.Requests()) > before; called != tc.calls {
				t.Fatalf("STS called: %v, want %v", called, tc.calls)
			}
		})
	}
	if n := len(evil.Requests()); n != 0 {
		t.Fatalf("the client-chosen endpoint received %d requests", n)
	}
	for _, r := range f.aws.Requests() {
		if r.Action == "GetCallerIdentity" && (r.Path != "/" || r.Body != vs.STSGetCallerIdentityBody) {
			t.Fatalf("authn sent %s %q", r.Path, r.Body)
		}
	}
}

func encodeRaw(js string) string { return base64.StdEncoding.EncodeToString([]byte(js)) }

func withCRLF(header string) string {
	id, _ := vs.ParseAWSIdentity(header)
	id.SecurityToken += "\r\nX-Injected: 1"
	return id.Encode()
}

func TestAWSIdentityChecks(t *testing.T) {
	t.Parallel()
	f := newAWSFixture(t, AWSConfig{})
	profile := "arn:aws:iam::" + testAccount + ":instance-profile/" + testRole
	n := 0
	// instance adds an instance and returns fresh identity for it.
	instance := func(in awstest.Instance, role string) (string, string) {
		n++
		in.ID = "i-00000000000000" + string(rune('a'+n/10)) + string(rune('0'+n%10))
		in.Account = testAccount
		if in.State == "" {
			in.State = "running"
		}
		f.aws.AddInstance(in)
		return in.ID, f.sign(t, f.aws.InstanceCredentials(testAccount, role, in.ID), testServerID, testVPC, time.Now())
	}
	ok := awstest.Instance{VPCID: testVPC, PrivateIP: "10.0.1.9", ProfileARN: profile}
	f.tenants["vpc-disabled"] = registry.Tenant{ID: "vpc-disabled", Account: testAccount, RoleARN: testRoleARN, AuthMethods: []string{"aws"}, Status: registry.TenantDisabled}
	f.tenants["vpc-mtls"] = registry.Tenant{ID: "vpc-mtls", Account: testAccount, RoleARN: testRoleARN, AuthMethods: []string{"mtls"}, Status: registry.TenantEnabled}
	f.tenants["vpc-untrusted"] = registry.Tenant{ID: "vpc-untrusted", Account: testAccount, RoleARN: testRoleARN, AuthMethods: []string{"aws"}, Status: registry.TenantEnabled}
	f.tenants["vpc-noec2"] = registry.Tenant{ID: "vpc-noec2", Account: testAccount, RoleARN: "arn:aws:iam::" + testAccount + ":role/no-ec2", AuthMethods: []string{"aws"}, Status: registry.TenantEnabled}
	f.aws.AddRole(awstest.Role{ARN: "arn:aws:iam::" + testAccount + ":role/no-ec2", Trusted: []string{"arn:aws:iam::" + selfAccount + ":user/sovkeys"}, ExternalID: "vpc-noec2"})
	srcTenant := f.tenants[testVPC]
	srcTenant.ID, srcTenant.CheckSourceIP = "vpc-0000000000000c0de", true
	srcTenant.RoleARN = "arn:aws:iam::" + testAccount + ":role/src-reader" // the external id is per tenant: one role each
	f.tenants[srcTenant.ID] = srcTenant
	f.aws.AddRole(awstest.Role{ARN: srcTenant.RoleARN, Trusted: []string{"arn:aws:iam::" + selfAccount + ":user/sovkeys"}, ExternalID: srcTenant.ID, DescribeInstances: true})

	retenant := func(header, tenant string) string {
		id, _ := vs.ParseAWSIdentity(header)
		id.Tenant = tenant
		return id.Encode()
	}
	for _, tc := range []struct {
		name string
		env  func() *shared.Envelope
		kind error
		code shared.Code
	}{
		{"path names another instance", func() *shared.Envelope { _, h := instance(ok, testRole); return envFor(h, testInstance, "") },
			ErrAWSSessionMismatch, shared.CodeAccessDenied},
		{"no tenant named", func() *shared.Envelope { id, h := instance(ok, testRole); return envFor(retenant(h, ""), id, "") },
			ErrAWSTenant, shared.CodeAuthenticationFailed},
		{"unknown tenant", func() *shared.Envelope {
			id, h := instance(ok, testRole)
			return envFor(retenant(h, "vpc-nope"), id, "")
		},
			ErrAWSTenant, shared.CodeAccessDenied},
		{"disabled tenant", func() *shared.Envelope {
			id, h := instance(ok, testRole)
			return envFor(retenant(h, "vpc-disabled"), id, "")
		},
			ErrAWSTenant, shared.CodeAccessDenied},
		{"tenant allows only mtls", func() *shared.Envelope {
			id, h := instance(ok, testRole)
			return envFor(retenant(h, "vpc-mtls"), id, "")
		},
			ErrAWSTenant, shared.CodeAccessDenied},
		{"trusted proxy names another vpc", func() *shared.Envelope {
			id, h := instance(ok, testRole)
			e := envFor(h, id, "")
			e.Evidence.SourceVPC = "vpc-0ffffffffffffffff"
			return e
		}, ErrAWSTenant, shared.CodeAccessDenied},
		{"caller of another account", func() *shared.Envelope {
			return envFor(f.sign(t, f.aws.InstanceCredentials(otherAccount, testRole, "i-0fedcba987654321"), testServerID, testVPC, time.Now()), "i-0fedcba987654321", "")
		}, ErrAWSAccount, shared.CodeAccessDenied},
		{"role does not trust sovkeys with this external id", func() *shared.Envelope {
			id, h := instance(ok, testRole)
			return envFor(retenant(h, "vpc-untrusted"), id, "")
		}, ErrAWSAssumeRole, shared.CodeAccessDenied},
		{"role may not describe instances", func() *shared.Envelope {
			id, h := instance(ok, testRole)
			return envFor(retenant(h, "vpc-noec2"), id, "")
		}, ErrAWSDescribe, shared.CodeAccessDenied},
		{"instance unknown to ec2", func() *shared.Envelope {
			return envFor(f.sign(t, f.aws.InstanceCredentials(testAccount, testRole, "i-0deadbeef0000000"), testServerID, testVPC, time.Now()), "i-0deadbeef0000000", "")
		}, ErrAWSInstanceNotFound, shared.CodeAccessDenied},
		{"stopped", func() *shared.Envelope {
			in := ok
			in.State = "stopped"
			id, h := instance(in, testRole)
			return envFor(h, id, "")
		},
			ErrAWSNotRunning, shared.CodeAccessDenied},
		{"other vpc", func() *shared.Envelope {
			in := ok
			in.VPCID = "vpc-0bbbbbbbbbbbbbbbb"
			id, h := instance(in, testRole)
			return envFor(h, id, "")
		},
			ErrAWSVPC, shared.CodeAccessDenied},
		{"no instance profile", func() *shared.Envelope {
			in := ok
			in.ProfileARN = ""
			id, h := instance(in, testRole)
			return envFor(h, id, "")
		},
			ErrAWSProfile, shared.CodeAccessDenied},
		{"role is not the instance profile's", func() *shared.Envelope { id, h := instance(ok, "other-role"); return envFor(h, id, "") },
			ErrAWSProfile, shared.CodeAccessDenied},
		{"source ip is not the instance's", func() *shared.Envelope {
			in := ok
			in.VPCID = srcTenant.ID
			id, h := instance(in, testRole)
			return envFor(retenant(h, srcTenant.ID), id, "10.9.9.9")
		}, ErrAWSSourceIP, shared.CodeAccessDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := f.verify(tc.env())
			wantAWSErr(t, err, tc.kind, tc.code)
		})
	}
	for _, tc := range []struct{ name, src string }{{"primary", "10.0.1.9"}, {"secondary interface", "10.0.2.7"}, {"ipv4-mapped", "::ffff:10.0.1.9"}} {
		t.Run("source ip matches "+tc.name, func(t *testing.T) {
			in := ok
			in.VPCID = srcTenant.ID
			in.Interfaces = []awstest.NetworkInterface{{VPCID: srcTenant.ID, PrivateIPs: []string{"10.0.2.7"}}, {VPCID: "vpc-elsewhere", PrivateIPs: []string{"10.7.7.7"}}}
			id, h := instance(in, testRole)
			if _, _, err := f.verify(envFor(retenant(h, srcTenant.ID), id, tc.src)); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("address of an interface in another vpc does not count", func(t *testing.T) {
		in := ok
		in.VPCID = srcTenant.ID
		in.Interfaces = []awstest.NetworkInterface{{VPCID: "vpc-elsewhere", PrivateIPs: []string{"10.7.7.7"}}}
		id, h := instance(in, testRole)
		_, _, err := f.verify(envFor(retenant(h, srcTenant.ID), id, "10.7.7.7"))
		wantAWSErr(t, err, ErrAWSSourceIP, shared.CodeAccessDenied)
	})
	t.Run("trusted proxy vpc alone names the tenant", func(t *testing.T) {
		id, h := instance(ok, testRole)
		e := envFor(retenant(h, ""), id, "")
		e.Evidence.SourceVPC = testVPC
		if _, _, err := f.verify(e); err != nil {
			t.Fatal(err)
		}
	})
}

func TestAWSIdentityCache(t *testing.T) {
	t.Parallel()
	f := newAWSFixture(t, AWSConfig{ServerID: testServerID, Timeout: 2 * time.Second, CacheTTL: time.Minute, CacheSize: 3})
	inst := f.aws.InstanceCredentials(testAccount, testRole, testInstance)
	header := f.sign(t, inst, testServerID, testVPC, time.Now())
	counts := func() [3]int {
		return [3]int{f.aws.Count("GetCallerIdentity"), f.aws.Count("AssumeRole"), f.aws.Count("DescribeInstances")}
	}
	for range 3 {
		if _, _, err := f.verify(envFor(header, testInstance, "")); err != nil {
			t.Fatal(err)
		}
	}
	if got := counts(); got != [3]int{1, 1, 1} {
		t.Fatalf("three verifications of one header made calls %v, want [1 1 1]", got)
	}
	// A new signature is a new STS call; the instance and the role's
	// credentials are still cached.
	if _, _, err := f.verify(envFor(f.sign(t, inst, testServerID, testVPC, time.Now().Add(time.Second)), testInstance, "")); err != nil {
		t.Fatal(err)
	}
	if got := counts(); got != [3]int{2, 1, 1} {
		t.Fatalf("calls %v, want [2 1 1]", got)
	}
	// A state change is seen once the description expires.
	f.aws.SetInstanceState(testInstance, "stopped")
	if _, _, err := f.verify(envFor(header, testInstance, "")); err != nil {
		t.Fatalf("within the ttl the cached description answers: %v", err)
	}
	f.clock.advance(61 * time.Second)
	_, _, err := f.verify(envFor(header, testInstance, ""))
	wantAWSErr(t, err, ErrAWSNotRunning, shared.CodeAccessDenied)
	// The cached identity never outlives the signature's freshness window.
	f.clock.advance(5 * time.Minute)
	_, _, err = f.verify(envFor(header, testInstance, ""))
	wantAWSErr(t, err, ErrAWSStale, shared.CodeAuthenticationFailed)

	// Caches are bounded.
	for i := range 10 {
		id := "i-0000000000000a" + string(rune('0'+i))
		f.aws.AddInstance(awstest.Instance{ID: id, Account: testAccount, State: "running", VPCID: testVPC,
			ProfileARN: "arn:aws:iam::" + testAccount + ":instance-profile/" + testRole})
		if _, _, err := f.verify(envFor(f.sign(t, f.aws.InstanceCredentials(testAccount, testRole, id), testServerID, testVPC, f.clock.now()), id, "")); err != nil {
			t.Fatal(err)
		}
	}
	if f.v.facts.len() > 3 || f.v.idents.len() > 3 {
		t.Fatalf("caches hold %d descriptions and %d identities, bound 3", f.v.facts.len(), f.v.idents.len())
	}
}

func TestAWSIdentityCacheDisabled(t *testing.T) {
	t.Parallel()
	f := newAWSFixture(t, AWSConfig{ServerID: testServerID, Timeout: 2 * time.Second, CacheTTL: 0, CacheSize: 10})
	header := f.sign(t, f.aws.InstanceCredentials(testAccount, testRole, testInstance), testServerID, testVPC, time.Now())
	for range 2 {
		if _, _, err := f.verify(envFor(header, testInstance, "")); err != nil {
			t.Fatal(err)
		}
	}
	if g, d := f.aws.Count("GetCallerIdentity"), f.aws.Count("DescribeInstances"); g != 2 || d != 2 {
		t.Fatalf("with ttl 0: %d GetCallerIdentity, %d DescribeInstances; want 2 and 2", g, d)
	}
}
