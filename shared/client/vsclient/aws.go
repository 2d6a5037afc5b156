package vsclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"

	"github.com/sovkeys/sovkeys/shared/api/vs"
)

// AWS instance identity: instead of a client certificate, an EC2 instance
// proves who it is with its instance-profile credentials. Every call carries
// the X-Sovkeys-AWS-Identity header: the signature headers of an
// sts:GetCallerIdentity request for the service's STS endpoint, with a
// signed X-Sovkeys-Server-ID naming the deployment (docs/aws-identity.md).
// The credentials themselves never leave the instance.

// DefaultAWSReuse is how long one signed identity is reused across calls.
// The service accepts a signature for its --max-skew (5 min by default) and
// caches the STS answer for it, so reuse saves an STS round trip per call.
const DefaultAWSReuse = time.Minute

// AWSInstance signs identity headers for one instance. It is safe for
// concurrent use.
type AWSInstance struct {
	// Credentials are the instance's credentials; nil means the instance
	// profile through IMDS.
	Credentials aws.CredentialsProvider
	// STSEndpoint is the STS endpoint the service is configured with
	// (--sts-endpoint, e.g. https://sts.eu-west-1.amazonaws.com), Region its
	// signing region (--aws-region).
	STSEndpoint, Region string
	// ServerID names the deployment (the service's --server-id).
	ServerID string
	// Tenant is the tenant to act for: the instance's VPC id by default.
	Tenant string
	// Now is the clock (default time.Now); Reuse overrides DefaultAWSReuse
	// (negative: sign every call).
	Now   func() time.Time
	Reuse time.Duration

	once     sync.Once
	provider aws.CredentialsProvider
	mu       sync.Mutex
	header   string
	signedAt time.Time
	keyID    string
}

// SignAWSIdentity signs, at now, the sts:GetCallerIdentity request the
// service will rebuild, and returns its signature headers as an identity.
func SignAWSIdentity(ctx context.Context, creds aws.Credentials, stsEndpoint, region, serverID, tenant string, now time.Time) (vs.AWSIdentity, error) {
	if !vs.ValidServerID(serverID) {
		return vs.AWSIdentity{}, errors.New("vsclient: server id must be 1-64 characters of [A-Za-z0-9._-]")
	}
	u, err := vs.STSURL(stsEndpoint)
	if err != nil {
		return vs.AWSIdentity{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(vs.STSGetCallerIdentityBody))
	if err != nil {
		return vs.AWSIdentity{}, err
	}
	req.Header.Set("Content-Type", vs.STSContentType)
	req.Header.Set(vs.HeaderServerID, serverID)
	sum := sha256.Sum256([]byte(vs.STSGetCallerIdentityBody))
	if err := v4.NewSigner().SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "sts", region, now); err != nil {
		return vs.AWSIdentity{}, fmt.Errorf("vsclient: sign identity: %w", err)
	}
	return vs.AWSIdentity{
		Version: vs.AWSIdentityVersion, Tenant: tenant,
		Authorization: req.Header.Get("Authorization"), AmzDate: req.Header.Get("X-Amz-Date"),
		SecurityToken: req.Header.Get("X-Amz-Security-Token"), ServerID: serverID,
	}, nil
}

// Header returns the X-Sovkeys-AWS-Identity value for a call made now,
// signing a new one when the last is older than Reuse or the credentials
// changed.
func (a *AWSInstance) Header(ctx context.Context) (string, error) {
	a.once.Do(func() {
		a.provider = a.Credentials
		if a.provider == nil {
			a.provider = aws.NewCredentialsCache(ec2rolecreds.New())
		}
	})
	creds, err := a.provider.Retrieve(ctx)
	if err != nil {
		return "", fmt.Errorf("vsclient: instance credentials: %w", err)
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	reuse := a.Reuse
	if reuse == 0 {
		reuse = DefaultAWSReuse
	}
	t := now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.header != "" && a.keyID == creds.AccessKeyID && t.Sub(a.signedAt) < reuse && t.Sub(a.signedAt) >= 0 &&
		(!creds.CanExpire || creds.Expires.After(t.Add(reuse))) {
		return a.header, nil
	}
	id, err := SignAWSIdentity(ctx, creds, a.STSEndpoint, a.Region, a.ServerID, a.Tenant, t)
	if err != nil {
		return "", err
	}
	a.header, a.signedAt, a.keyID = id.Encode(), t, creds.AccessKeyID
	return a.header, nil
}

// awsTransport adds the identity header to every request.
type awsTransport struct {
	base http.RoundTripper
	id   *AWSInstance
}

func (t *awsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h, err := t.id.Header(r.Context())
	if err != nil {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return nil, err
	}
	r = r.Clone(r.Context())
	r.Header.Set(vs.HeaderAWSIdentity, h)
	return t.base.RoundTrip(r)
}

// AWSConfig configures a client that authenticates as an EC2 instance.
type AWSConfig struct {
	BaseURL string
	CAFile  string // trust anchor of the gateway's TLS certificate (PEM); empty: system roots
	// SigningKeyDER is the pinned service signing key (DER SPKI).
	SigningKeyDER []byte
	Instance      *AWSInstance
}

// NewAWS builds a client that proves its identity with AWS credentials
// (TLS without a client certificate).
func NewAWS(cfg AWSConfig) (*Client, error) {
	if cfg.Instance == nil {
		return nil, errors.New("vsclient: aws instance is required")
	}
	if !vs.ValidServerID(cfg.Instance.ServerID) {
		return nil, errors.New("vsclient: server id must be 1-64 characters of [A-Za-z0-9._-]")
	}
	if _, err := vs.STSURL(cfg.Instance.STSEndpoint); err != nil {
		return nil, err
	}
	if cfg.Instance.Region == "" {
		return nil, errors.New("vsclient: aws region is required")
	}
	tlsCfg, err := clientTLS(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	pub, err := ParseSigningKey(cfg.SigningKeyDER)
	if err != nil {
		return nil, err
	}
	return &Client{
		BaseURL: strings.TrimRight(cfg.BaseURL, "/"),
		HTTP: &http.Client{Timeout: 30 * time.Second, Transport: &awsTransport{
			base: &http.Transport{TLSClientConfig: tlsCfg}, id: cfg.Instance,
		}},
		SigningKey: pub,
	}, nil
}
