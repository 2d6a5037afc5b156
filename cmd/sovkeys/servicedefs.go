package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/services/audit"
	"github.com/sovkeys/sovkeys/services/authn"
	"github.com/sovkeys/sovkeys/services/gateway"
	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

func nothing() {}

// gatewayFlags: the HTTPS front and its trusted-proxy mode (docs/aws-identity.md).
type gatewayFlags struct {
	listen, tlsCert, tlsKey                 string
	requestTimeout                          time.Duration
	ratePerIP                               float64
	burstPerIP                              int
	proxyCIDRs, sourceIPHeader, vpcIDHeader string
	maxInMesh, maxConns                     int
	admitWithin                             time.Duration
	connRate                                float64
}

func gatewayService() service {
	return service{
		name: "gateway", usage: "--nats URL --creds FILE --listen ADDR --tls-cert FILE --tls-key FILE",
		short: "one HTTPS gateway (XKS and volume-secret APIs)",
		flags: func(fs *flag.FlagSet, getenv func(string) string, c *serviceConfig) {
			g := &c.gateway
			fs.StringVar(&g.listen, "listen", "127.0.0.1:8443", "HTTPS listen address")
			fs.StringVar(&g.tlsCert, "tls-cert", "", "TLS certificate chain (PEM)")
			fs.StringVar(&g.tlsKey, "tls-key", "", "TLS private key (PEM)")
			fs.DurationVar(&g.requestTimeout, "request-timeout", time.Second, "end-to-end deadline of a request, carried in the envelope")
			fs.Float64Var(&g.ratePerIP, "rate-per-ip", 10000, "requests/s per source address (0 = off)")
			fs.IntVar(&g.burstPerIP, "burst-per-ip", 2000, "burst per source address")
			fs.IntVar(&g.maxInMesh, "max-in-mesh", gateway.DefaultMaxInMesh, "XKS requests this gateway has in the mesh at once; more wait in a queue bounded by time (-1 = no admission control)")
			fs.DurationVar(&g.admitWithin, "admit-within", gateway.DefaultAdmitWithin, "refuse at once (429) an XKS request not expected to be answered within this of its arrival")
			fs.IntVar(&g.maxConns, "max-conns", gateway.DefaultMaxConns, "open client connections at most (-1 = no bound)")
			fs.Float64Var(&g.connRate, "conn-rate", gateway.DefaultConnRate, "new client connections (TLS handshakes) per second at most (-1 = no bound)")
			fs.StringVar(&g.proxyCIDRs, "trusted-proxy-cidrs", getenv("SOVKEYS_TRUSTED_PROXY_CIDRS"), "comma-separated CIDRs of proxies whose source-ip/vpc-id headers are believed (env SOVKEYS_TRUSTED_PROXY_CIDRS; empty = off)")
			fs.StringVar(&g.sourceIPHeader, "source-ip-header", getenv("SOVKEYS_SOURCE_IP_HEADER"), "header with the caller's address from a trusted proxy, last hop used, e.g. X-Forwarded-For (env SOVKEYS_SOURCE_IP_HEADER)")
			fs.StringVar(&g.vpcIDHeader, "vpc-id-header", getenv("SOVKEYS_VPC_ID_HEADER"), "header with the caller's VPC id from a trusted proxy (env SOVKEYS_VPC_ID_HEADER)")
			c.registerPool(fs)
			c.registerAuditSignPool(fs)
		},
		build: func(_ context.Context, c *serviceConfig, d serviceDeps) (runner, func(), error) {
			g := c.gateway
			proxies, err := gateway.ParseCIDRs(g.proxyCIDRs)
			if err != nil {
				return nil, nil, err
			}
			r, err := gateway.New(gateway.Config{
				Listen: g.listen, CertFile: g.tlsCert, KeyFile: g.tlsKey,
				RequestTimeout: g.requestTimeout, Topology: c.common.topo.t, VolumePool: c.pool, AuditSignPool: c.audit.signPool,
				RatePerIP: g.ratePerIP, BurstPerIP: g.burstPerIP,
				MaxInMesh: g.maxInMesh, AdmitWithin: g.admitWithin, MaxConns: g.maxConns, ConnRate: g.connRate,
				TrustedProxy: gateway.TrustedProxyConfig{CIDRs: proxies, SourceIPHeader: g.sourceIPHeader, VPCIDHeader: g.vpcIDHeader},
			}, gateway.Deps{NC: d.nc, JS: d.js, Logger: d.logger, Tracer: d.tp, Now: time.Now})
			return r, nothing, err
		},
	}
}

// authnFlags: SigV4 and instance authentication, rate limits per caller,
// AWS instance identity (docs/aws-identity.md).
type authnFlags struct {
	maxSkew                                    time.Duration
	concurrency                                int
	ratePerCaller, vsRatePerCaller             float64
	burstPerCaller, vsBurstPerCaller           int
	serverID, region, stsEndpoint, ec2Endpoint string
	timeout, cacheTTL                          time.Duration
	cacheSize                                  int
	accessKeyID, secretAccessKey, sessionToken string
	keyDeletionMinWait, keyDeletionSweep       time.Duration
	workKey                                    string
}

func authnService() service {
	return service{
		name: "authn", usage: "--nats URL --creds FILE",
		short: "one authn: SigV4, instance identity, policy, rate limits",
		flags: func(fs *flag.FlagSet, getenv func(string) string, c *serviceConfig) {
			a := &c.authn
			fs.DurationVar(&a.maxSkew, "max-skew", 5*time.Minute, "SigV4 clock skew tolerance")
			fs.IntVar(&a.concurrency, "concurrency", 256, "requests verified at once")
			fs.Float64Var(&a.ratePerCaller, "rate-per-credential", 3000, "XKS requests/s per access key id (0 = off)")
			fs.IntVar(&a.burstPerCaller, "burst-per-credential", 3000, "XKS burst per access key id")
			fs.Float64Var(&a.vsRatePerCaller, "rate-per-instance", 200, "volume-secret calls/s per instance (0 = off)")
			fs.IntVar(&a.vsBurstPerCaller, "burst-per-instance", 200, "volume-secret burst per instance")
			fs.StringVar(&a.serverID, "server-id", getenv("SOVKEYS_SERVER_ID"), "name of this deployment that instances sign into their AWS identity; empty = AWS identity off (env SOVKEYS_SERVER_ID)")
			fs.StringVar(&a.region, "aws-region", envOr(getenv, "SOVKEYS_AWS_REGION", "us-east-1"), "STS signing region and default EC2 region of tenants (env SOVKEYS_AWS_REGION)")
			fs.StringVar(&a.stsEndpoint, "sts-endpoint", getenv("SOVKEYS_STS_ENDPOINT"), "STS endpoint instances sign for (env SOVKEYS_STS_ENDPOINT; default https://sts.<region>.amazonaws.com)")
			fs.StringVar(&a.ec2Endpoint, "ec2-endpoint", getenv("SOVKEYS_EC2_ENDPOINT"), "EC2 endpoint for every region (env SOVKEYS_EC2_ENDPOINT; default: AWS's for the tenant's region)")
			fs.DurationVar(&a.timeout, "aws-timeout", 2*time.Second, "time all AWS calls of one request may take (also capped by the request deadline)")
			fs.DurationVar(&a.cacheTTL, "aws-cache-ttl", time.Minute, "reuse of verified AWS identities and instance descriptions (0 = off, max 10m)")
			fs.IntVar(&a.cacheSize, "aws-cache-size", 10000, "entries per AWS identity cache")
			fs.DurationVar(&a.keyDeletionMinWait, "key-deletion-min-wait", authn.DefaultKeyDeletionMinWait, "shortest waiting period of a key deletion (KMS: 7 days)")
			fs.DurationVar(&a.keyDeletionSweep, "key-deletion-sweep", time.Minute, "how often keys past their deletion date are destroyed")
			fs.StringVar(&a.workKey, "work-key", getenv("SOVKEYS_WORK_KEY"), "seed file of the key authn signs work with, pinned by `sovkeys init` (env SOVKEYS_WORK_KEY; default authn.workkey beside --creds, as cluster init writes it)")
			c.registerModel(fs)
			// authn's own AWS credentials: the standard variables, read here so
			// the injected environment applies; unset = the SDK's default chain.
			a.accessKeyID, a.secretAccessKey, a.sessionToken = getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY"), getenv("AWS_SESSION_TOKEN")
		},
		build: func(_ context.Context, c *serviceConfig, d serviceDeps) (runner, func(), error) {
			a := c.authn
			var creds aws.CredentialsProvider
			if a.accessKeyID != "" && a.secretAccessKey != "" {
				creds = credentials.NewStaticCredentialsProvider(a.accessKeyID, a.secretAccessKey, a.sessionToken)
			}
			signer, err := shared.LoadWorkSigner(workKeyPath(a.workKey, c.common.conn.creds), time.Now)
			if err != nil {
				return nil, nil, fmt.Errorf("authn --work-key: %w", err)
			}
			r, err := authn.New(authn.Config{
				Topology: c.common.topo.t, MaxSkew: a.maxSkew, Concurrency: a.concurrency,
				RatePerCaller: a.ratePerCaller, BurstPerCaller: a.burstPerCaller,
				VSRatePerCaller: a.vsRatePerCaller, VSBurstPerCaller: a.vsBurstPerCaller,
				ProxyModel: "sovkeys " + shared.Version, EKMVendor: c.model,
				AWS: authn.AWSConfig{
					ServerID: a.serverID, Region: a.region, STSEndpoint: a.stsEndpoint, EC2Endpoint: a.ec2Endpoint,
					Timeout: a.timeout, CacheTTL: a.cacheTTL, CacheSize: a.cacheSize,
				},
				KeyDeletion: authn.KeyDeletionConfig{MinWait: a.keyDeletionMinWait, Sweep: a.keyDeletionSweep},
			}, authn.Deps{NC: d.nc, JS: d.js, Logger: d.logger, Tracer: d.tp, Now: time.Now, AWSCredentials: creds,
				WorkSigner: signer})
			return r, nothing, err
		},
	}
}

// keyworkerFlags: the HSM and the write-once store of tenant keys (EKTs).
type keyworkerFlags struct {
	hsmModule, hsmToken, pinFile string
	hsmProfile                   string
	sessions, unsealThreshold    int
	unsealMaxFailedLogins        int
	ivFromHSM, auditEd25519      bool
	healthTTL                    time.Duration
	ektStore, s3Bucket, s3Prefix string
}

func keyworkerService() service {
	return service{
		name: "keyworker", usage: "--nats URL --creds FILE --pool NAME --hsm-module SO --hsm-token-label LABEL",
		short:    "one HSM sidecar of a pool (PIN: SOVKEYS_HSM_PIN, --hsm-pin-file, or `sovkeys unseal` shares)",
		opensHSM: true,
		flags: func(fs *flag.FlagSet, getenv func(string) string, c *serviceConfig) {
			k := &c.keyworker
			c.registerPool(fs)
			fs.StringVar(&k.hsmModule, "hsm-module", getenv("SOVKEYS_HSM_MODULE"), "PKCS#11 module path (env SOVKEYS_HSM_MODULE)")
			fs.StringVar(&k.hsmToken, "hsm-token-label", envOr(getenv, "SOVKEYS_HSM_TOKEN_LABEL", "sovkeys"), "token, found by label (env SOVKEYS_HSM_TOKEN_LABEL)")
			fs.StringVar(&k.pinFile, "hsm-pin-file", "", "file holding the user PIN (else env SOVKEYS_HSM_PIN, else wait for unseal shares)")
			fs.IntVar(&k.unsealThreshold, "unseal-threshold", 2, "shares needed to unseal: the threshold the PIN was split with (shares claiming another are refused)")
			fs.IntVar(&k.unsealMaxFailedLogins, "unseal-max-failed-logins", unseal.DefaultMaxFailedLogins, "failed HSM logins with unseal shares allowed per pool and hour, shared by the pool's keyworkers; then the pool stays sealed")
			c.registerModel(fs)
			fs.StringVar(&k.hsmProfile, "hsm-profile", "", "HSM family softhsm|cloudhsm|luna|proteccio|nshield (default: from --hsm-model; docs/hsm.md)")
			fs.IntVar(&k.sessions, "sessions", 8, "PKCS#11 sessions = HSM operations at once in this process")
			fs.BoolVar(&k.ivFromHSM, "iv-from-hsm", false, "let the HSM generate GCM IVs (Luna/CloudHSM); checked to be 12 non-zero bytes")
			fs.BoolVar(&k.auditEd25519, "audit-ed25519", false, "also sign audit checkpoints with an Ed25519 HSM key (for Ed25519-only witnesses); only where the HSM vendor can back that key up: SoftHSM cannot wrap it (docs/audit.md)")
			fs.DurationVar(&k.healthTTL, "health-ttl", 10*time.Second, "reuse an HSM health result this long (max 60s)")
			fs.StringVar(&k.ektStore, "ekt-store", "jetstream", "write-once store of tenant keys (EKTs): jetstream | s3")
			c.s3.register(fs, getenv)
			fs.StringVar(&k.s3Bucket, "s3-bucket", getenv("SOVKEYS_S3_BUCKET"), "S3 bucket for EKTs, with --ekt-store s3 (env SOVKEYS_S3_BUCKET)")
			fs.StringVar(&k.s3Prefix, "s3-prefix", "ekt/", "object key prefix for EKTs")
		},
		build: func(ctx context.Context, c *serviceConfig, d serviceDeps) (runner, func(), error) {
			hsm, closeFn := d.hsm, nothing
			if hsm == nil {
				var err error
				if hsm, err = unsealHSM(ctx, c, d.js, d.logger); err != nil {
					return nil, nil, err
				}
				closeFn = func() { closeHSM(hsm, d.logger) }
			}
			store, err := ektStoreOf(ctx, c, d.js)
			if err != nil {
				closeFn()
				return nil, nil, err
			}
			r, err := keyworker.New(keyworker.Config{
				Pool: c.pool, Model: c.model, Topology: c.common.topo.t, HealthTTL: c.keyworker.healthTTL,
				AuditEd25519: c.keyworker.auditEd25519,
			}, keyworker.Deps{NC: d.nc, JS: d.js, HSM: hsm, EKTs: store, Logger: d.logger, Tracer: d.tp, Now: time.Now})
			if err != nil {
				closeFn()
				return nil, nil, err
			}
			return r, closeFn, nil
		},
	}
}

// ektStoreOf builds the keyworker's EKT store.
func ektStoreOf(ctx context.Context, c *serviceConfig, js jetstream.JetStream) (writeonce.Store, error) {
	k := c.keyworker
	switch k.ektStore {
	case "jetstream":
		return writeonce.NewJetStream(ctx, js, c.common.topo.t.Replicas)
	case "s3":
		return writeonce.NewS3(ctx, writeonce.S3Config{
			Endpoint: c.s3.endpoint, Region: c.s3.region, Bucket: k.s3Bucket, Prefix: k.s3Prefix,
			AccessKeyID: c.s3.accessKeyID, SecretAccessKey: c.s3.secretAccessKey, UsePathStyle: c.s3.pathStyle,
		})
	}
	return nil, fmt.Errorf("%w: --ekt-store must be jetstream or s3", shared.ErrConfigValidation)
}

// auditFlags: the audit service's export and signing.
type auditFlags struct {
	store, bucket, prefix, signPool string
	tenantExport, knownScopesOnly   bool
	deployment                      string
	witnesses                       multiFlag
}

func auditService() service {
	return service{
		name: "audit", usage: "--nats URL --creds FILE [--audit-store jetstream|s3]",
		short: "one audit consumer: sequences, hash-chains, signs and exports the audit log",
		flags: func(fs *flag.FlagSet, getenv func(string) string, c *serviceConfig) {
			a := &c.audit
			fs.StringVar(&a.store, "audit-store", audit.BackendJetStream, "central export: jetstream (object store) | s3 (uses --s3-endpoint/--s3-region and SOVKEYS_S3_* credentials)")
			fs.StringVar(&a.bucket, "audit-s3-bucket", "", "central S3 bucket (with --audit-store s3)")
			fs.StringVar(&a.prefix, "audit-s3-prefix", audit.DefaultPrefix, "key prefix in S3 buckets (central and tenants')")
			c.registerAuditSignPool(fs)
			fs.StringVar(&a.deployment, "audit-deployment", envOr(getenv, "SOVKEYS_AUDIT_DEPLOYMENT", audit.DefaultDeployment), "deployment name in every checkpoint's origin line; verifiers need it (env SOVKEYS_AUDIT_DEPLOYMENT)")
			fs.Var(&a.witnesses, "audit-witness", "URL of a C2SP tlog-witness asked to cosign checkpoints (`sovkeys witness`); repeatable")
			fs.BoolVar(&a.tenantExport, "audit-tenant-export", false, "also export to each tenant's own bucket (tenant --audit-bucket) through the same S3 endpoint")
			fs.BoolVar(&a.knownScopesOnly, "audit-known-scopes-only", true, "record events of a key store or tenant the registry never knew as forgeries instead of opening a log for them (=false: tools that publish to made-up scopes, e.g. `loadtest -api audit`)")
			c.s3.register(fs, getenv)
		},
		build: func(_ context.Context, c *serviceConfig, d serviceDeps) (runner, func(), error) {
			r, err := audit.New(c.auditConfig(), audit.Deps{NC: d.nc, JS: d.js, Logger: d.logger, Tracer: d.tp, Now: time.Now})
			return r, nothing, err
		},
	}
}

// auditConfig builds the audit service configuration.
func (c *serviceConfig) auditConfig() audit.Config {
	a := c.audit
	s3cfg := writeonce.S3Config{
		Endpoint: c.s3.endpoint, Region: c.s3.region, Prefix: a.prefix, UsePathStyle: c.s3.pathStyle,
		AccessKeyID: c.s3.accessKeyID, SecretAccessKey: c.s3.secretAccessKey,
	}
	central := s3cfg
	central.Bucket = a.bucket
	return audit.Config{
		Topology: c.common.topo.t, SignPool: a.signPool,
		Central:      audit.CentralConfig{Backend: a.store, S3: central},
		TenantExport: audit.TenantExportConfig{Enabled: a.tenantExport, S3: s3cfg},
		Deployment:   a.deployment, Witnesses: a.witnesses,
		KnownScopesOnly: a.knownScopesOnly,
	}
}
