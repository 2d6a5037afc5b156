package authn

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// The AWS side of instance identity: every call goes through
// aws-sdk-go-v2 with the configured endpoints.

// stsAPI is the part of the STS client authn uses.
type stsAPI interface {
	GetCallerIdentity(ctx context.Context, in *sts.GetCallerIdentityInput, optFns ...func(*sts.Options)) (*sts.GetCallerIdentityOutput, error)
	AssumeRole(ctx context.Context, in *sts.AssumeRoleInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleOutput, error)
}

// ec2API is the part of the EC2 client authn uses.
type ec2API interface {
	DescribeInstances(ctx context.Context, in *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
}

var (
	_ stsAPI = (*sts.Client)(nil)
	_ ec2API = (*ec2.Client)(nil)
)

// roleRefresh is how long a tenant's role client is kept; its credentials
// cache renews the assumed-role credentials on its own before they expire.
const (
	roleClientTTL   = time.Hour
	roleSessionTime = 15 * time.Minute
	sdkMaxAttempts  = 2
)

// awsVerifier verifies AWS identities.
type awsVerifier struct {
	cfg     AWSConfig
	maxSkew time.Duration
	now     func() time.Time
	log     *slog.Logger
	stsURL  *url.URL

	forwarder stsAPI // unsigned: carries the instance's own signature
	self      stsAPI // authn's credentials: AssumeRole
	newEC2    func(region string, creds aws.CredentialsProvider) ec2API

	idents *ttlCache[[32]byte, callerIdentity]
	facts  *ttlCache[instanceKey, instanceFacts]
	roles  *ttlCache[roleKey, *tenantRole]
}

type instanceKey struct{ tenant, account, role, region, instance string }

type roleKey struct{ role, externalID, region string }

// tenantRole is a tenant's assumed role: cached credentials and an EC2
// client signing with them.
type tenantRole struct {
	creds *aws.CredentialsCache
	ec2   ec2API
}

// newAWSVerifier builds the SDK clients. authn's own credentials are
// deps.AWSCredentials, or the SDK's default chain (environment, shared
// config, web identity, ECS/EC2 roles) when nil.
func newAWSVerifier(ctx context.Context, cfg AWSConfig, maxSkew time.Duration, deps Deps, now func() time.Time, log *slog.Logger) (*awsVerifier, error) {
	stsURL, err := vs.STSURL(cfg.stsEndpoint())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", shared.ErrConfigValidation, err)
	}
	var base aws.Config
	if deps.AWSCredentials != nil {
		base = aws.Config{Region: cfg.Region, Credentials: aws.NewCredentialsCache(deps.AWSCredentials)}
	} else if base, err = config.LoadDefaultConfig(ctx, config.WithRegion(cfg.Region)); err != nil {
		return nil, fmt.Errorf("authn: aws config: %w", err)
	}
	base.RetryMaxAttempts = sdkMaxAttempts
	if deps.AWSHTTPClient != nil {
		base.HTTPClient = deps.AWSHTTPClient
	}
	endpoint := cfg.stsEndpoint()
	v := &awsVerifier{
		cfg: cfg, maxSkew: maxSkew, now: now, log: log, stsURL: stsURL,
		forwarder: sts.NewFromConfig(base, func(o *sts.Options) {
			o.BaseEndpoint = aws.String(endpoint)
			o.Credentials = aws.AnonymousCredentials{} // never sign with our own credentials
		}),
		self: sts.NewFromConfig(base, func(o *sts.Options) { o.BaseEndpoint = aws.String(endpoint) }),
		newEC2: func(region string, creds aws.CredentialsProvider) ec2API {
			return ec2.NewFromConfig(base, func(o *ec2.Options) {
				o.Region, o.Credentials = region, creds
				if cfg.EC2Endpoint != "" {
					o.BaseEndpoint = aws.String(cfg.EC2Endpoint)
				}
			})
		},
		idents: newTTLCache[[32]byte, callerIdentity](cfg.CacheSize),
		facts:  newTTLCache[instanceKey, instanceFacts](cfg.CacheSize),
		roles:  newTTLCache[roleKey, *tenantRole](cfg.CacheSize),
	}
	return v, nil
}

// forwardSignature rebuilds the GetCallerIdentity request from our own
// configuration and adds the instance's signature headers. It runs last in
// the SDK's finalize step (after retries and the no-op anonymous signer),
// on every attempt.
type forwardSignature struct {
	url      *url.URL
	doc      vs.AWSIdentity
	serverID string
}

func (*forwardSignature) ID() string { return "SovkeysForwardInstanceSignature" }

func (m *forwardSignature) HandleFinalize(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
	req, ok := in.Request.(*smithyhttp.Request)
	if !ok {
		return middleware.FinalizeOutput{}, middleware.Metadata{}, fmt.Errorf("authn: unexpected sts transport request %T", in.Request)
	}
	req, err := req.SetStream(strings.NewReader(vs.STSGetCallerIdentityBody))
	if err != nil {
		return middleware.FinalizeOutput{}, middleware.Metadata{}, err
	}
	u := *m.url
	req.Method, req.URL, req.Host = "POST", &u, ""
	req.ContentLength = int64(len(vs.STSGetCallerIdentityBody))
	req.Header.Del("Authorization")
	req.Header.Del("X-Amz-Security-Token")
	req.Header.Set("Content-Type", vs.STSContentType)
	req.Header.Set("Authorization", m.doc.Authorization)
	req.Header.Set("X-Amz-Date", m.doc.AmzDate)
	req.Header.Set("X-Amz-Security-Token", m.doc.SecurityToken)
	req.Header.Set(vs.HeaderServerID, m.serverID)
	in.Request = req
	return next.HandleFinalize(ctx, in)
}

// callerIdentity asks STS who signed doc (or reuses a recent answer for
// the same header, never beyond the signature's freshness window).
func (v *awsVerifier) callerIdentity(ctx context.Context, key [32]byte, doc vs.AWSIdentity, signedAt time.Time, budget time.Duration) (callerIdentity, error) {
	if id, ok := v.idents.get(key, v.now()); ok {
		return id, nil
	}
	fwd := &forwardSignature{url: v.stsURL, doc: doc, serverID: v.cfg.ServerID}
	out, err := v.forwarder.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}, func(o *sts.Options) {
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			return st.Finalize.Add(fwd, middleware.After)
		})
	})
	if err != nil {
		return callerIdentity{}, v.classify(err, "STS GetCallerIdentity", budget, func(code string) error {
			return awsUnauthenticated(ErrAWSRejected, "STS refused the instance's signature (%s)", code)
		})
	}
	id, ok := parseCaller(aws.ToString(out.Arn), aws.ToString(out.Account))
	if !ok {
		return callerIdentity{}, awsDenied(ErrAWSNotInstanceRole, "caller %s is not an instance role session (arn:aws:sts::ACCOUNT:assumed-role/ROLE/INSTANCE)", aws.ToString(out.Arn))
	}
	now := v.now()
	v.idents.put(key, id, now, minTime(now.Add(v.cfg.CacheTTL), signedAt.Add(v.maxSkew)))
	return id, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// role returns the client of a tenant's role in region.
func (v *awsVerifier) role(tn registry.Tenant, region string) *tenantRole {
	key := roleKey{role: tn.RoleARN, externalID: tn.ID, region: region}
	now := v.now()
	if r, ok := v.roles.get(key, now); ok {
		return r
	}
	session := "sovkeys-" + v.cfg.ServerID
	if len(session) > 64 {
		session = session[:64]
	}
	creds := aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(v.self, tn.RoleARN, func(o *stscreds.AssumeRoleOptions) {
		o.RoleSessionName = session
		o.ExternalID = aws.String(tn.ID)
		o.Duration = roleSessionTime
	}))
	r := &tenantRole{creds: creds, ec2: v.newEC2(region, creds)}
	v.roles.put(key, r, now, now.Add(roleClientTTL))
	return r
}

// describe returns EC2's view of the instance, through the tenant's role.
func (v *awsVerifier) describe(ctx context.Context, tn registry.Tenant, instance string, budget time.Duration) (instanceFacts, error) {
	region := cmp.Or(tn.Region, v.cfg.Region)
	key := instanceKey{tenant: tn.ID, account: tn.Account, role: tn.RoleARN, region: region, instance: instance}
	if f, ok := v.facts.get(key, v.now()); ok {
		return f, nil
	}
	r := v.role(tn, region)
	if _, err := r.creds.Retrieve(ctx); err != nil {
		return instanceFacts{}, v.classify(err, "STS AssumeRole", budget, func(code string) error {
			return awsDenied(ErrAWSAssumeRole, "sovkeys cannot assume role %s of tenant %q (%s): check its trust policy and external id", tn.RoleARN, tn.ID, code)
		})
	}
	out, err := r.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{instance}})
	if err != nil {
		return instanceFacts{}, v.classify(err, "EC2 DescribeInstances", budget, func(code string) error {
			if strings.HasPrefix(code, "InvalidInstanceID.") {
				return awsDenied(ErrAWSInstanceNotFound, "instance %q not found in account %s, region %s", instance, tn.Account, region)
			}
			return awsDenied(ErrAWSDescribe, "role %s may not describe instances (%s)", tn.RoleARN, code)
		})
	}
	f, ok := factsOf(out, instance)
	if !ok {
		return instanceFacts{}, awsDenied(ErrAWSInstanceNotFound, "instance %q not found in account %s, region %s", instance, tn.Account, region)
	}
	now := v.now()
	v.facts.put(key, f, now, now.Add(v.cfg.CacheTTL))
	return f, nil
}

// factsOf extracts the instance from a DescribeInstances answer.
func factsOf(out *ec2.DescribeInstancesOutput, id string) (instanceFacts, bool) {
	for _, res := range out.Reservations {
		for _, in := range res.Instances {
			if aws.ToString(in.InstanceId) != id {
				continue
			}
			f := instanceFacts{Owner: aws.ToString(res.OwnerId), VPC: aws.ToString(in.VpcId)}
			if in.State != nil {
				f.State = string(in.State.Name)
			}
			if in.IamInstanceProfile != nil {
				f.ProfileARN = aws.ToString(in.IamInstanceProfile.Arn)
			}
			add := func(s *string) {
				if a, err := netip.ParseAddr(aws.ToString(s)); err == nil {
					f.Addrs = append(f.Addrs, a.Unmap())
				}
			}
			add(in.PrivateIpAddress)
			for _, n := range in.NetworkInterfaces {
				if aws.ToString(n.VpcId) != f.VPC {
					continue // a multi-VPC attachment: not an address in this VPC
				}
				add(n.PrivateIpAddress)
				for _, p := range n.PrivateIpAddresses {
					add(p.PrivateIpAddress)
				}
				for _, p := range n.Ipv6Addresses {
					add(p.Ipv6Address)
				}
			}
			return f, true
		}
	}
	return instanceFacts{}, false
}

// throttlingCodes are AWS error codes that mean "try later", not "no".
var throttlingCodes = map[string]bool{
	"Throttling": true, "ThrottlingException": true, "RequestLimitExceeded": true, "RequestThrottled": true,
	"ServiceUnavailable": true, "InternalFailure": true, "InternalError": true, "Unavailable": true,
}

// classify turns an SDK error into a caller-safe error: timeouts, network
// failures, throttling and server faults are 503 (CodeDependencyTimeout);
// an AWS refusal becomes refused(code).
func (v *awsVerifier) classify(err error, call string, budget time.Duration, refused func(code string) error) error {
	var ae smithy.APIError
	var re *awshttp.ResponseError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return awsFail(shared.CodeDependencyTimeout, ErrAWSUnavailable, "%s did not answer within %s", call, budget)
	case errors.As(err, &ae) && !throttlingCodes[ae.ErrorCode()] && ae.ErrorFault() != smithy.FaultServer &&
		!(errors.As(err, &re) && re.HTTPStatusCode() >= 500):
		return refused(ae.ErrorCode())
	}
	v.log.Warn("aws call failed", "call", call, "err", err)
	return awsFail(shared.CodeDependencyTimeout, ErrAWSUnavailable, "%s is unavailable, retry later", call)
}
