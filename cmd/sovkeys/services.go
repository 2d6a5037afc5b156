package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sovkeys/sovkeys/services/audit"
	"github.com/sovkeys/sovkeys/services/authn"
	"github.com/sovkeys/sovkeys/services/gateway"
	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/tracing"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// serviceFlags hold every service's settings; each service reads its own.
type serviceFlags struct {
	conn     connFlags
	topo     topologyFlags
	logLevel string

	listen, tlsCert, tlsKey string
	requestTimeout          time.Duration

	maxSkew     time.Duration
	concurrency int

	audit auditFlags

	ratePerIP, ratePerCaller, vsRatePerCaller    float64
	burstPerIP, burstPerCaller, vsBurstPerCaller int

	pool, hsmModule, hsmToken, hsmPinFile, model string
	sessions                                     int
	ivFromHSM                                    bool
	healthTTL                                    time.Duration

	ektStore                                    string
	s3Endpoint, s3Region, s3Bucket, s3KeyPrefix string
	s3PathStyle                                 bool
	s3AccessKeyID, s3SecretAccessKey            string

	aws awsFlags // AWS instance identity (authn) and trusted proxies (gateway)
}

func (f *serviceFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	f.conn.register(fs, getenv)
	f.topo.register(fs)
	fs.StringVar(&f.logLevel, "log-level", envOr(getenv, "SOVKEYS_LOG_LEVEL", "info"), "debug|info|warn|error (env SOVKEYS_LOG_LEVEL)")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8443", "gateway: HTTPS listen address")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "gateway: TLS certificate chain (PEM)")
	fs.StringVar(&f.tlsKey, "tls-key", "", "gateway: TLS private key (PEM)")
	fs.DurationVar(&f.requestTimeout, "request-timeout", time.Second, "gateway: end-to-end deadline of a request")
	fs.DurationVar(&f.maxSkew, "max-skew", 5*time.Minute, "authn: SigV4 clock skew tolerance")
	fs.IntVar(&f.concurrency, "concurrency", 256, "authn: requests verified at once")
	f.audit.register(fs)
	fs.Float64Var(&f.ratePerIP, "rate-per-ip", 10000, "gateway: requests/s per source address (0 = off)")
	fs.IntVar(&f.burstPerIP, "burst-per-ip", 2000, "gateway: burst per source address")
	fs.Float64Var(&f.ratePerCaller, "rate-per-credential", 3000, "authn: XKS requests/s per access key id (0 = off)")
	fs.IntVar(&f.burstPerCaller, "burst-per-credential", 3000, "authn: XKS burst per access key id")
	fs.Float64Var(&f.vsRatePerCaller, "rate-per-instance", 200, "authn: volume-secret calls/s per instance (0 = off)")
	fs.IntVar(&f.vsBurstPerCaller, "burst-per-instance", 200, "authn: volume-secret burst per instance")
	fs.StringVar(&f.pool, "pool", "default", "keyworker: pool name (one HSM or partition)")
	fs.StringVar(&f.hsmModule, "hsm-module", getenv("SOVKEYS_HSM_MODULE"), "keyworker: PKCS#11 module path (env SOVKEYS_HSM_MODULE)")
	fs.StringVar(&f.hsmToken, "hsm-token-label", envOr(getenv, "SOVKEYS_HSM_TOKEN_LABEL", "sovkeys"), "keyworker: token label (env SOVKEYS_HSM_TOKEN_LABEL)")
	fs.StringVar(&f.hsmPinFile, "hsm-pin-file", "", "keyworker: file holding the user PIN (else env SOVKEYS_HSM_PIN)")
	fs.StringVar(&f.model, "hsm-model", "SoftHSMv2", "keyworker: HSM model reported by XKS health")
	fs.IntVar(&f.sessions, "sessions", 8, "keyworker: PKCS#11 sessions = operations in flight in this process")
	fs.BoolVar(&f.ivFromHSM, "iv-from-hsm", false, "keyworker: let the HSM generate GCM IVs (Luna/CloudHSM)")
	fs.DurationVar(&f.healthTTL, "health-ttl", 10*time.Second, "keyworker: reuse an HSM health result this long (max 60s)")
	fs.StringVar(&f.ektStore, "ekt-store", "jetstream", "keyworker: write-once store of tenant keys (EKTs): jetstream | s3")
	fs.StringVar(&f.s3Endpoint, "s3-endpoint", getenv("SOVKEYS_S3_ENDPOINT"), "keyworker: S3 endpoint URL (env SOVKEYS_S3_ENDPOINT; empty = AWS)")
	fs.StringVar(&f.s3Region, "s3-region", envOr(getenv, "SOVKEYS_S3_REGION", "us-east-1"), "keyworker: S3 region")
	fs.StringVar(&f.s3Bucket, "s3-bucket", getenv("SOVKEYS_S3_BUCKET"), "keyworker: S3 bucket for EKTs (env SOVKEYS_S3_BUCKET)")
	fs.StringVar(&f.s3KeyPrefix, "s3-prefix", "ekt/", "keyworker: object key prefix for EKTs")
	fs.BoolVar(&f.s3PathStyle, "s3-path-style", true, "keyworker: path-style S3 addressing")
	f.s3AccessKeyID = getenv("SOVKEYS_S3_ACCESS_KEY_ID")         // secrets only from the environment
	f.s3SecretAccessKey = getenv("SOVKEYS_S3_SECRET_ACCESS_KEY") // never from flags (visible in ps)
	f.aws.register(fs, getenv)
}

// ektStoreOf builds the keyworker's EKT store.
func ektStoreOf(ctx context.Context, f *serviceFlags, js jetstream.JetStream) (writeonce.Store, error) {
	switch f.ektStore {
	case "jetstream":
		return writeonce.NewJetStream(ctx, js, f.topo.t.Replicas)
	case "s3":
		return writeonce.NewS3(ctx, writeonce.S3Config{
			Endpoint: f.s3Endpoint, Region: f.s3Region, Bucket: f.s3Bucket, Prefix: f.s3KeyPrefix,
			AccessKeyID: f.s3AccessKeyID, SecretAccessKey: f.s3SecretAccessKey, UsePathStyle: f.s3PathStyle,
		})
	}
	return nil, fmt.Errorf("%w: --ekt-store must be jetstream or s3", shared.ErrConfigValidation)
}

// runService runs one service as its own process.
func runService(ctx context.Context, name string, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serviceFlags
	f.register(fs, getenv)
	metricsListen := fs.String("metrics-listen", getenv("SOVKEYS_METRICS_LISTEN"), metricsFlagUsage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	stopMetrics, err := startMetrics(*metricsListen, logger)
	if err != nil {
		return err
	}
	defer stopMetrics()
	var hsm *keyworker.HSM
	if name == "keyworker" {
		// Without a PIN the keyworker starts sealed and waits for
		// `sovkeys unseal` shares (see startService).
		if pin, err := readPIN(f.hsmPinFile, getenv); err == nil {
			if hsm, err = keyworker.OpenHSM(ctx, f.hsmConfig(pin), logger); err != nil {
				return err
			}
			defer func() { _ = hsm.Close() }()
		}
	}
	return startService(ctx, name, &f, hsm, getenv, logger)
}

func readPIN(file string, getenv func(string) string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("hsm pin file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if pin := getenv("SOVKEYS_HSM_PIN"); pin != "" {
		return pin, nil
	}
	return "", fmt.Errorf("%w: the HSM user PIN is required (--hsm-pin-file or SOVKEYS_HSM_PIN)", shared.ErrConfigValidation)
}

func (f *serviceFlags) hsmConfig(pin string) keyworker.HSMConfig {
	return keyworker.HSMConfig{ModulePath: f.hsmModule, TokenLabel: f.hsmToken, PIN: pin, Sessions: f.sessions, IVFromHSM: f.ivFromHSM}
}

// unsealHSM waits for k PIN shares in the memory-only unseal bucket and
// opens the HSM with the PIN they rebuild, in this process's memory only.
func unsealHSM(ctx context.Context, f *serviceFlags, js jetstream.JetStream, logger *slog.Logger) (*keyworker.HSM, error) {
	kv, err := unseal.Open(ctx, js, f.topo.t)
	if err != nil {
		return nil, err
	}
	var hsm *keyworker.HSM
	err = unseal.Await(ctx, kv, f.pool, logger, func(pin string) error {
		h, err := keyworker.OpenHSM(ctx, f.hsmConfig(pin), logger)
		if err != nil {
			return err
		}
		hsm = h
		return nil
	})
	return hsm, err
}

// runner is what every service package offers.
type runner interface {
	Run(ctx context.Context) error
}

// startService connects one service to NATS and runs it until ctx ends.
func startService(ctx context.Context, name string, f *serviceFlags, hsm *keyworker.HSM, getenv func(string) string, logger *slog.Logger) error {
	tp, err := tracing.Setup(ctx, "sovkeys-"+name, getenv)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = tp.Shutdown(sctx)
		cancel()
	}()
	nc, js, err := mesh.Connect(ctx, f.conn.config("sovkeys-"+name), logger)
	if err != nil {
		return err
	}
	defer nc.Close()
	var store writeonce.Store
	if name == "keyworker" && hsm == nil {
		if hsm, err = unsealHSM(ctx, f, js, logger); err != nil {
			return err
		}
		defer func() { _ = hsm.Close() }()
	}
	if name == "keyworker" {
		if store, err = ektStoreOf(ctx, f, js); err != nil {
			return err
		}
	}
	svc, err := buildService(name, f, nc, js, hsm, store, tp, logger)
	if err != nil {
		return err
	}
	if err := svc.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func buildService(name string, f *serviceFlags, nc *nats.Conn, js jetstream.JetStream, hsm *keyworker.HSM, store writeonce.Store, tp *sdktrace.TracerProvider, logger *slog.Logger) (runner, error) {
	switch name {
	case "gateway":
		proxies, err := gateway.ParseCIDRs(f.aws.proxyCIDRs)
		if err != nil {
			return nil, err
		}
		return gateway.New(gateway.Config{
			Listen: f.listen, CertFile: f.tlsCert, KeyFile: f.tlsKey,
			RequestTimeout: f.requestTimeout, Topology: f.topo.t, VolumePool: f.pool,
			RatePerIP: f.ratePerIP, BurstPerIP: f.burstPerIP,
			TrustedProxy: gateway.TrustedProxyConfig{CIDRs: proxies, SourceIPHeader: f.aws.sourceIPHeader, VPCIDHeader: f.aws.vpcIDHeader},
		}, gateway.Deps{NC: nc, JS: js, Logger: logger, Tracer: tp, Now: time.Now})
	case "authn":
		return authn.New(authn.Config{
			Topology: f.topo.t, MaxSkew: f.maxSkew, Concurrency: f.concurrency,
			RatePerCaller: f.ratePerCaller, BurstPerCaller: f.burstPerCaller,
			VSRatePerCaller: f.vsRatePerCaller, VSBurstPerCaller: f.vsBurstPerCaller,
			ProxyModel: "sovkeys " + shared.Version, EKMVendor: f.model,
			AWS: f.aws.authn(),
		}, authn.Deps{NC: nc, JS: js, Logger: logger, Tracer: tp, Now: time.Now, AWSCredentials: f.aws.credentials()})
	case "keyworker":
		return keyworker.New(keyworker.Config{
			Pool: f.pool, Model: f.model, Topology: f.topo.t, HealthTTL: f.healthTTL,
		}, keyworker.Deps{NC: nc, JS: js, HSM: hsm, EKTs: store, Logger: logger, Tracer: tp, Now: time.Now})
	case "audit":
		return audit.New(f.audit.config(f),
			audit.Deps{NC: nc, JS: js, Logger: logger, Tracer: tp, Now: time.Now})
	}
	return nil, fmt.Errorf("unknown service %q", name)
}

// awsFlags configure AWS instance identity (authn) and trusted proxy mode
// (gateway); docs/aws-identity.md.
type awsFlags struct {
	serverID, region, stsEndpoint, ec2Endpoint string
	timeout, cacheTTL                          time.Duration
	cacheSize                                  int
	accessKeyID, secretAccessKey, sessionToken string

	proxyCIDRs, sourceIPHeader, vpcIDHeader string
}

func (a *awsFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	fs.StringVar(&a.serverID, "server-id", getenv("SOVKEYS_SERVER_ID"), "authn: name of this deployment that instances sign into their AWS identity; empty = AWS identity off (env SOVKEYS_SERVER_ID)")
	fs.StringVar(&a.region, "aws-region", envOr(getenv, "SOVKEYS_AWS_REGION", "us-east-1"), "authn: STS signing region and default EC2 region of tenants (env SOVKEYS_AWS_REGION)")
	fs.StringVar(&a.stsEndpoint, "sts-endpoint", getenv("SOVKEYS_STS_ENDPOINT"), "authn: STS endpoint instances sign for (env SOVKEYS_STS_ENDPOINT; default https://sts.<region>.amazonaws.com)")
	fs.StringVar(&a.ec2Endpoint, "ec2-endpoint", getenv("SOVKEYS_EC2_ENDPOINT"), "authn: EC2 endpoint for every region (env SOVKEYS_EC2_ENDPOINT; default: AWS's for the tenant's region)")
	fs.DurationVar(&a.timeout, "aws-timeout", 2*time.Second, "authn: time all AWS calls of one request may take (also capped by the request deadline)")
	fs.DurationVar(&a.cacheTTL, "aws-cache-ttl", time.Minute, "authn: reuse of verified AWS identities and instance descriptions (0 = off, max 10m)")
	fs.IntVar(&a.cacheSize, "aws-cache-size", 10000, "authn: entries per AWS identity cache")
	fs.StringVar(&a.proxyCIDRs, "trusted-proxy-cidrs", getenv("SOVKEYS_TRUSTED_PROXY_CIDRS"), "gateway: comma-separated CIDRs of proxies whose source-ip/vpc-id headers are believed (env SOVKEYS_TRUSTED_PROXY_CIDRS; empty = off)")
	fs.StringVar(&a.sourceIPHeader, "source-ip-header", getenv("SOVKEYS_SOURCE_IP_HEADER"), "gateway: header with the caller's address from a trusted proxy, last hop used, e.g. X-Forwarded-For (env SOVKEYS_SOURCE_IP_HEADER)")
	fs.StringVar(&a.vpcIDHeader, "vpc-id-header", getenv("SOVKEYS_VPC_ID_HEADER"), "gateway: header with the caller's VPC id from a trusted proxy (env SOVKEYS_VPC_ID_HEADER)")
	// authn's own AWS credentials: the standard variables, read here so the
	// injected environment applies; unset = the SDK's default chain.
	a.accessKeyID, a.secretAccessKey, a.sessionToken = getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY"), getenv("AWS_SESSION_TOKEN")
}

func (a *awsFlags) authn() authn.AWSConfig {
	return authn.AWSConfig{
		ServerID: a.serverID, Region: a.region, STSEndpoint: a.stsEndpoint, EC2Endpoint: a.ec2Endpoint,
		Timeout: a.timeout, CacheTTL: a.cacheTTL, CacheSize: a.cacheSize,
	}
}

func (a *awsFlags) credentials() aws.CredentialsProvider {
	if a.accessKeyID == "" || a.secretAccessKey == "" {
		return nil
	}
	return credentials.NewStaticCredentialsProvider(a.accessKeyID, a.secretAccessKey, a.sessionToken)
}
