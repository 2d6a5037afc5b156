package authn

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// AWS instance identity (docs/aws-identity.md).
//
// The instance sends the signature headers of an sts:GetCallerIdentity
// request it signed for our STS endpoint with a signed X-Sovkeys-Server-ID.
// authn rebuilds that request from its own configuration (URL, body,
// content type; only Authorization, X-Amz-Date, X-Amz-Security-Token and
// our own server id are taken over), sends it to STS and learns the caller:
// arn:aws:sts::ACCOUNT:assumed-role/ROLE/INSTANCE. Then, through the
// tenant's cross-account role, EC2 DescribeInstances must show that
// instance running in the tenant's VPC with an instance profile of that
// role (and, when the tenant asks, the source IP among its addresses).

// AWSConfig configures AWS instance identity. The method is off when
// ServerID is empty.
type AWSConfig struct {
	// ServerID names this deployment; instances sign it into each identity,
	// so a signature made for another deployment is useless here.
	ServerID string
	// Region is the STS signing region and the default EC2 region of tenants.
	Region string
	// STSEndpoint is where GetCallerIdentity and AssumeRole go (default:
	// the regional endpoint of Region). Instances must sign for exactly it.
	STSEndpoint string
	// EC2Endpoint overrides the EC2 endpoint of every region (VPC endpoint,
	// tests); empty: the SDK's endpoint for the tenant's region.
	EC2Endpoint string
	// Timeout bounds all AWS calls of one request, further capped at four
	// fifths of the time left before the request's deadline.
	Timeout time.Duration
	// CacheTTL is how long a verified caller identity (never past its
	// signature's freshness) and an instance description are reused; 0
	// disables both caches.
	CacheTTL time.Duration
	// CacheSize bounds each cache.
	CacheSize int
}

// Enabled reports whether the AWS method is configured.
func (c AWSConfig) Enabled() bool { return c.ServerID != "" }

func (c AWSConfig) stsEndpoint() string {
	if c.STSEndpoint != "" {
		return c.STSEndpoint
	}
	return vs.DefaultSTSEndpoint(c.Region)
}

// Validate checks the configuration (nothing when the method is off).
func (c AWSConfig) Validate() error {
	if !c.Enabled() {
		return nil
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: aws identity: %s", shared.ErrConfigValidation, fmt.Sprintf(format, args...))
	}
	switch {
	case !vs.ValidServerID(c.ServerID):
		return bad("server id must be 1-64 characters of [A-Za-z0-9._-]")
	case !validRegion(c.Region):
		return bad("region %q is not an AWS region name", c.Region)
	case c.Timeout < 10*time.Millisecond || c.Timeout > time.Minute:
		return bad("timeout must be in [10ms, 1m]")
	case c.CacheTTL < 0 || c.CacheTTL > 10*time.Minute:
		return bad("cache ttl must be in [0, 10m]")
	case c.CacheSize < 1:
		return bad("cache size must be positive")
	}
	if _, err := vs.STSURL(c.stsEndpoint()); err != nil {
		return bad("sts endpoint %q: want http(s)://host[:port]", c.stsEndpoint())
	}
	if c.EC2Endpoint != "" {
		if u, err := url.Parse(c.EC2Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("ec2 endpoint %q: want http(s)://host[:port]", c.EC2Endpoint)
		}
	}
	return nil
}

func validRegion(r string) bool {
	if r == "" || len(r) > 32 {
		return false
	}
	for i := 0; i < len(r); i++ {
		if c := r[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Why an AWS identity was refused; each error also carries a stable code
// (401, 403 or 503 at the gateway).
var (
	ErrAWSDisabled         = errors.New("authn: aws identity is not enabled on this deployment")
	ErrAWSMalformed        = errors.New("authn: aws identity is malformed")
	ErrAWSServerID         = errors.New("authn: aws identity is for another deployment")
	ErrAWSStale            = errors.New("authn: aws identity signature is not fresh")
	ErrAWSRejected         = errors.New("authn: sts rejected the aws identity")
	ErrAWSNotInstanceRole  = errors.New("authn: aws caller is not an instance role session")
	ErrAWSSessionMismatch  = errors.New("authn: aws role session is not the path's instance")
	ErrAWSTenant           = errors.New("authn: tenant does not accept this aws identity")
	ErrAWSAccount          = errors.New("authn: aws account is not the tenant's")
	ErrAWSAssumeRole       = errors.New("authn: cannot assume the tenant's role")
	ErrAWSDescribe         = errors.New("authn: cannot describe the tenant's instances")
	ErrAWSInstanceNotFound = errors.New("authn: instance not found")
	ErrAWSNotRunning       = errors.New("authn: instance is not running")
	ErrAWSVPC              = errors.New("authn: instance is not in the tenant's vpc")
	ErrAWSProfile          = errors.New("authn: instance profile does not match the caller's role")
	ErrAWSSourceIP         = errors.New("authn: source ip is not the instance's")
	ErrAWSUnavailable      = errors.New("authn: aws did not answer")
)

// awsError is a caller-safe *shared.Error that also matches a sentinel.
type awsError struct {
	err  *shared.Error
	kind error
}

func (e *awsError) Error() string   { return e.err.Message }
func (e *awsError) Unwrap() []error { return []error{e.err, e.kind} }

func awsFail(code shared.Code, kind error, format string, args ...any) error {
	return &awsError{err: shared.NewError(code, "aws identity: "+format, args...), kind: kind}
}

func awsDenied(kind error, format string, args ...any) error {
	return awsFail(shared.CodeAccessDenied, kind, format, args...)
}

func awsUnauthenticated(kind error, format string, args ...any) error {
	return awsFail(shared.CodeAuthenticationFailed, kind, format, args...)
}

// Headers an identity may sign: exactly what authn sends to STS.
var (
	awsSignable = []string{"content-length", "content-type", "host", "x-amz-date", "x-amz-security-token", strings.ToLower(vs.HeaderServerID)}
	awsMustSign = []string{"host", "x-amz-date", "x-amz-security-token", strings.ToLower(vs.HeaderServerID)}
)

// callerIdentity is what STS said about the signer.
type callerIdentity struct {
	ARN, Account, Role, Session string
}

// parseCaller accepts only an assumed-role session:
// arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION.
func parseCaller(arn, account string) (callerIdentity, bool) {
	p := strings.SplitN(arn, ":", 6)
	if len(p) != 6 || p[0] != "arn" || p[2] != "sts" || p[3] != "" || p[4] != account || !validAccount(account) {
		return callerIdentity{}, false
	}
	res := strings.Split(p[5], "/")
	if len(res) != 3 || res[0] != "assumed-role" || res[1] == "" || res[2] == "" {
		return callerIdentity{}, false
	}
	return callerIdentity{ARN: arn, Account: account, Role: res[1], Session: res[2]}, true
}

func validAccount(a string) bool {
	if len(a) != 12 {
		return false
	}
	for i := 0; i < len(a); i++ {
		if a[i] < '0' || a[i] > '9' {
			return false
		}
	}
	return true
}

// instanceFacts is what EC2 said about an instance.
type instanceFacts struct {
	Owner, State, VPC, ProfileARN string
	// Addrs are its private IPv4 and IPv6 addresses in its own VPC.
	Addrs []netip.Addr
}

// profileParts splits arn:PARTITION:iam::ACCOUNT:instance-profile/[path/]NAME.
func profileParts(arn string) (account, name string, ok bool) {
	p := strings.SplitN(arn, ":", 6)
	if len(p) != 6 || p[0] != "arn" || p[2] != "iam" || !strings.HasPrefix(p[5], "instance-profile/") {
		return "", "", false
	}
	segs := strings.Split(p[5], "/")
	return p[4], segs[len(segs)-1], segs[len(segs)-1] != ""
}

// roleAccount returns the account of arn:PARTITION:iam::ACCOUNT:role/...
func roleAccount(arn string) (string, bool) {
	p := strings.SplitN(arn, ":", 6)
	if len(p) != 6 || p[0] != "arn" || p[2] != "iam" || !strings.HasPrefix(p[5], "role/") || !validAccount(p[4]) {
		return "", false
	}
	return p[4], true
}

// precheck refuses, without calling AWS, an identity that cannot verify
// here: another deployment, an unsigned server id or session token,
// headers we would not send, another region or service, a stale date.
func (v *awsVerifier) precheck(doc vs.AWSIdentity) (time.Time, error) {
	if doc.ServerID != v.cfg.ServerID {
		return time.Time{}, awsUnauthenticated(ErrAWSServerID, "the identity was signed for deployment %q, not this one (%q)", doc.ServerID, v.cfg.ServerID)
	}
	a, err := parseAuthorization(doc.Authorization)
	if err != nil {
		return time.Time{}, awsUnauthenticated(ErrAWSMalformed, "authorization: %s", strings.TrimPrefix(shared.MessageOf(err), "sovkeys: authentication failed: "))
	}
	for _, h := range awsMustSign {
		if !slices.Contains(a.SignedHeaders, h) {
			return time.Time{}, awsUnauthenticated(ErrAWSMalformed, "the signature must cover %s", h)
		}
	}
	for _, h := range a.SignedHeaders {
		if !slices.Contains(awsSignable, h) {
			return time.Time{}, awsUnauthenticated(ErrAWSMalformed, "signed header %q is not part of the request sovkeys sends to STS", h)
		}
	}
	if doc.SecurityToken == "" {
		return time.Time{}, awsUnauthenticated(ErrAWSMalformed, "instance-profile credentials carry a session token; none was sent")
	}
	if a.Service != "sts" || a.Region != v.cfg.Region {
		return time.Time{}, awsUnauthenticated(ErrAWSMalformed, "the identity is signed for %s in %s; this deployment verifies with sts in %s", a.Service, a.Region, v.cfg.Region)
	}
	t, err := time.Parse(amzDateLayout, doc.AmzDate)
	if err != nil || a.Date != doc.AmzDate[:8] {
		return time.Time{}, awsUnauthenticated(ErrAWSMalformed, "x_amz_date must be yyyymmddThhmmssZ of the credential scope's day")
	}
	if skew := v.now().Sub(t); skew > v.maxSkew || skew < -v.maxSkew {
		return time.Time{}, awsUnauthenticated(ErrAWSStale, "the identity was signed %s from server time, more than the allowed %s: sign a fresh one",
			skew.Abs().Round(time.Second), v.maxSkew)
	}
	return t, nil
}

// verify authenticates an AWS identity and authorizes it for the path's
// instance; it returns the tenant to act for. lookup reads the tenant cache.
func (v *awsVerifier) verify(ctx context.Context, env *shared.Envelope, lookup func(string) (registry.Tenant, bool), ev *shared.AuditEvent) (registry.Tenant, error) {
	raw := env.Evidence.AWSIdentity
	doc, err := vs.ParseAWSIdentity(raw)
	if err != nil {
		return registry.Tenant{}, awsUnauthenticated(ErrAWSMalformed, "%s", strings.TrimPrefix(shared.MessageOf(err), "aws identity header: "))
	}
	signedAt, err := v.precheck(doc)
	if err != nil {
		return registry.Tenant{}, err
	}
	ctx, cancel, budget := v.budget(ctx, env.Deadline)
	defer cancel()

	// Authenticate: STS says who signed.
	caller, err := v.callerIdentity(ctx, sha256.Sum256([]byte(raw)), doc, signedAt, budget)
	if err != nil {
		return registry.Tenant{}, err
	}
	ev.CallerID, ev.Principal = caller.Session, caller.ARN
	if caller.Session != env.Evidence.InstanceID {
		return registry.Tenant{}, awsDenied(ErrAWSSessionMismatch, "role session %q may not act for instance %q", caller.Session, env.Evidence.InstanceID)
	}

	// The tenant: claimed in the identity and/or named by a trusted proxy.
	tenantID := doc.Tenant
	if vpc := env.Evidence.SourceVPC; vpc != "" {
		if tenantID != "" && tenantID != vpc {
			return registry.Tenant{}, awsDenied(ErrAWSTenant, "the identity names tenant %q but the request came through vpc %q", tenantID, vpc)
		}
		tenantID = vpc
	}
	if tenantID == "" {
		return registry.Tenant{}, awsUnauthenticated(ErrAWSTenant, "the identity names no tenant (the instance's VPC id)")
	}
	tn, ok := lookup(tenantID)
	switch {
	case !ok:
		return registry.Tenant{}, awsDenied(ErrAWSTenant, "tenant %q is not registered", tenantID)
	case tn.Account != caller.Account:
		return registry.Tenant{}, awsDenied(ErrAWSAccount, "account %s is not tenant %q's", caller.Account, tn.ID)
	}
	ev.Scope = tn.ID
	switch {
	case tn.Status != registry.TenantEnabled:
		return registry.Tenant{}, awsDenied(ErrAWSTenant, "tenant %q is disabled", tn.ID)
	case !slices.Contains(tn.AuthMethods, "aws"):
		return registry.Tenant{}, awsDenied(ErrAWSTenant, "tenant %q does not allow aws instance identity", tn.ID)
	}
	if acct, ok := roleAccount(tn.RoleARN); !ok || acct != tn.Account {
		return registry.Tenant{}, awsDenied(ErrAWSTenant, "tenant %q has no role of account %s for sovkeys to assume", tn.ID, tn.Account)
	}

	// Authorize: EC2 says what the instance is.
	facts, err := v.describe(ctx, tn, caller.Session, budget)
	if err != nil {
		return registry.Tenant{}, err
	}
	if err := checkInstance(tn, caller, facts, env.Evidence.SourceIP); err != nil {
		return registry.Tenant{}, err
	}
	return tn, nil
}

// checkInstance applies the EC2 facts to the caller.
func checkInstance(tn registry.Tenant, caller callerIdentity, f instanceFacts, sourceIP string) error {
	id := caller.Session
	if f.Owner != "" && f.Owner != tn.Account {
		return awsDenied(ErrAWSInstanceNotFound, "instance %q is not in account %s", id, tn.Account)
	}
	if f.State != "running" {
		return awsDenied(ErrAWSNotRunning, "instance %q is %s, not running", id, cmp.Or(f.State, "in an unknown state"))
	}
	if f.VPC != tn.ID {
		return awsDenied(ErrAWSVPC, "instance %q is in %s, not in tenant vpc %s", id, cmp.Or(f.VPC, "no vpc"), tn.ID)
	}
	if f.ProfileARN == "" {
		return awsDenied(ErrAWSProfile, "instance %q has no instance profile", id)
	}
	acct, name, ok := profileParts(f.ProfileARN)
	if !ok || acct != caller.Account || name != caller.Role {
		return awsDenied(ErrAWSProfile, "instance %q runs with instance profile %q, not one named after role %q of account %s",
			id, f.ProfileARN, caller.Role, caller.Account)
	}
	if tn.CheckSourceIP {
		ip, err := netip.ParseAddr(sourceIP)
		if err != nil || !slices.Contains(f.Addrs, ip.Unmap()) {
			return awsDenied(ErrAWSSourceIP, "the request came from %s, not from a private address of instance %q", cmp.Or(sourceIP, "an unknown address"), id)
		}
	}
	return nil
}

// budget derives the context of a request's AWS calls: at most
// cfg.Timeout, and at most four fifths of the time left before the
// deadline, so a slow AWS answers 503 from here rather than a bare
// gateway timeout, with time left for the keyworker.
func (v *awsVerifier) budget(ctx context.Context, deadline time.Time) (context.Context, context.CancelFunc, time.Duration) {
	d := v.cfg.Timeout
	if !deadline.IsZero() {
		if left := deadline.Sub(v.now()) * 4 / 5; left < d {
			d = max(left, time.Millisecond)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	return ctx, cancel, d
}

// volumeSecretAWS authenticates an instance by its AWS identity and
// forwards the call to its tenant's pool.
func (s *Service) volumeSecretAWS(ctx context.Context, env *shared.Envelope, ev *shared.AuditEvent) (bool, error) {
	ev.Kind = shared.AuditKindTenant
	ev.CallerType = "aws"
	if s.aws == nil {
		return false, awsUnauthenticated(ErrAWSDisabled, "not enabled on this deployment (no --server-id)")
	}
	tn, err := s.aws.verify(ctx, env, s.tenants.Get, ev)
	if err != nil {
		return false, err
	}
	if stopped, why := s.kill.Engaged(killswitch.ScopeTenant, tn.ID); stopped {
		return false, shared.NewError(shared.CodeAccessDenied, "kill switch engaged (%s)", why)
	}
	if err := s.admitVS(env, ev); err != nil {
		return false, err
	}
	env.Authz = &shared.Authz{
		CallerType: "aws", CallerID: env.Evidence.InstanceID, Principal: ev.Principal,
		Pool: tn.Pool, Tenant: tn.ID, EKTName: tn.EKTName,
	}
	if err := s.forward(ctx, env); err != nil {
		return false, err
	}
	return true, nil
}

// startAWS builds the AWS verifier when the method is configured.
func (s *Service) startAWS(ctx context.Context) error {
	if !s.cfg.AWS.Enabled() {
		return nil
	}
	v, err := newAWSVerifier(ctx, s.cfg.AWS, s.cfg.MaxSkew, s.awsDeps, s.now, s.log)
	if err != nil {
		return err
	}
	s.aws = v
	s.log.Info("aws instance identity enabled", "server_id", s.cfg.AWS.ServerID, "region", s.cfg.AWS.Region, "sts", s.cfg.AWS.stsEndpoint())
	return nil
}
