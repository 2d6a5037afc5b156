package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/tracing"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
)

// serviceConfig holds the settings of the four services. Each service's
// FlagSet binds only its own part (service.flags); standalone binds all.
type serviceConfig struct {
	common commonFlags
	pool   string // keyworker: its pool; gateway: the pool of /v1/public-signing-key
	model  string // keyworker and authn: the HSM model XKS health reports
	s3     s3Flags

	gateway   gatewayFlags
	authn     authnFlags
	keyworker keyworkerFlags
	audit     auditFlags
}

// service is one of the four services: its flags and how it is built on a
// NATS connection.
type service struct {
	name, usage, short string
	// opensHSM: the service opens the HSM before connecting when a PIN is
	// at hand (a wrong PIN fails fast); without one it starts sealed and
	// waits for `sovkeys unseal` shares.
	opensHSM bool
	flags    func(fs *flag.FlagSet, getenv func(string) string, c *serviceConfig)
	build    func(ctx context.Context, c *serviceConfig, d serviceDeps) (runner, func(), error)
}

// serviceDeps is what every service is built on.
type serviceDeps struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	tp     *sdktrace.TracerProvider
	logger *slog.Logger
	hsm    *keyworker.HSM // keyworker: open already, or nil to wait for unseal shares
}

// runner is what every service package offers.
type runner interface {
	Run(ctx context.Context) error
}

// services lists the four services, front to back.
func services() []service {
	return []service{gatewayService(), authnService(), keyworkerService(), auditService()}
}

// serviceCommands are the rows of the command table that run services.
func serviceCommands() []command {
	cmds := []command{standaloneCommand()}
	for _, svc := range services() {
		cmds = append(cmds, define(svc.name, svc.usage, svc.short, groupService,
			svc.register,
			func(ctx context.Context, c *serviceConfig, s stdio) error {
				logger, err := newLogger(s.stderr, c.common.logLevel)
				if err != nil {
					return err
				}
				stopMetrics, err := startMetrics(c.common.metricsListen, logger)
				if err != nil {
					return err
				}
				defer stopMetrics()
				var hsm *keyworker.HSM
				if svc.opensHSM {
					if pin, ok, err := readPIN(c.keyworker.pinFile, s.getenv); err != nil {
						return err
					} else if ok {
						if hsm, err = openHSMRetrying(ctx, c, pin, logger); err != nil {
							return err
						}
						defer closeHSM(hsm, logger)
					}
				}
				return runService(ctx, svc, c, hsm, s.getenv, logger)
			}))
	}
	return cmds
}

// register binds the common flags and the service's own into c.
func (svc service) register(fs *flag.FlagSet, getenv func(string) string, c *serviceConfig) {
	c.common.register(fs, getenv)
	svc.flags(fs, getenv, c)
}

// runService connects one service to NATS and runs it until ctx ends.
func runService(ctx context.Context, svc service, c *serviceConfig, hsm *keyworker.HSM, getenv func(string) string, logger *slog.Logger) error {
	tp, err := tracing.Setup(ctx, "sovkeys-"+svc.name, getenv)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := tp.Shutdown(sctx); err != nil {
			logger.Warn("trace export at shutdown", "err", err)
		}
		cancel()
	}()
	// Wait for NATS rather than exit: a cluster may start in any order.
	var nc *nats.Conn
	var js jetstream.JetStream
	if err := mesh.Retry(ctx, logger, "nats connect", mesh.DefaultBackoff, func(context.Context) (err error) {
		nc, js, err = mesh.Connect(ctx, c.common.conn.config("sovkeys-"+svc.name), logger)
		return err
	}); err != nil {
		return err
	}
	defer nc.Close()
	if svc.opensHSM && hsm == nil {
		// Unsealed once: the shares are purged after use, so later restarts
		// of the service below keep this HSM.
		if err := mesh.Retry(ctx, logger, "unseal", mesh.DefaultBackoff, func(ctx context.Context) (err error) {
			hsm, err = unsealHSM(ctx, c, js, logger)
			return err
		}); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		defer closeHSM(hsm, logger)
	}
	// Declarations and binds retried until the cluster answers; a service
	// that loses them later is rebuilt the same way.
	err = mesh.Supervise(ctx, logger, svc.name, mesh.DefaultBackoff, time.Now, func(ctx context.Context) error {
		r, closeFn, err := svc.build(ctx, c, serviceDeps{nc: nc, js: js, tp: tp, logger: logger, hsm: hsm})
		if err != nil {
			return err
		}
		defer closeFn()
		return r.Run(ctx)
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", svc.name, err)
	}
	return nil
}

// closeHSM closes the HSM at shutdown, reporting a failure.
func closeHSM(hsm *keyworker.HSM, logger *slog.Logger) {
	if err := hsm.Close(); err != nil {
		logger.Warn("hsm close", "err", err)
	}
}

// readPIN reads the HSM user PIN from the file or SOVKEYS_HSM_PIN; ok is
// false when neither is given.
func readPIN(file string, getenv func(string) string) (pin string, ok bool, err error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", false, fmt.Errorf("hsm pin file: %w", err)
		}
		return strings.TrimSpace(string(b)), true, nil
	}
	if pin := getenv("SOVKEYS_HSM_PIN"); pin != "" {
		return pin, true, nil
	}
	return "", false, nil
}

// openHSMRetrying opens the HSM, retrying while it fails for a reason
// that may pass (a token not visible yet, a device error at a cold start);
// a login refusal or a configuration error ends it at once.
func openHSMRetrying(ctx context.Context, c *serviceConfig, pin string, logger *slog.Logger) (*keyworker.HSM, error) {
	for n := 0; ; n++ {
		h, err := openHSM(ctx, c, pin, logger)
		if err == nil || !keyworker.TransientHSMError(err) {
			return h, err
		}
		d := mesh.DefaultBackoff.Delay(n)
		logger.WarnContext(ctx, "hsm not ready; retrying", "attempt", n+1, "retry_in", d.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(d):
		}
	}
}

// openHSM opens the keyworker's HSM with pin.
func openHSM(ctx context.Context, c *serviceConfig, pin string, logger *slog.Logger) (*keyworker.HSM, error) {
	k := c.keyworker
	return keyworker.OpenHSM(ctx, keyworker.HSMConfig{
		ModulePath: k.hsmModule, TokenLabel: k.hsmToken, PIN: pin, Sessions: k.sessions, IVFromHSM: k.ivFromHSM,
		Profile: cmp.Or(k.hsmProfile, keyworker.ProfileForModel(c.model)),
	}, logger)
}

// unsealHSM publishes an ephemeral key in the unseal bucket, waits for k
// PIN shares encrypted to it and opens the HSM with the PIN they rebuild,
// in this process's memory only, within the pool's failed-login budget.
func unsealHSM(ctx context.Context, c *serviceConfig, js jetstream.JetStream, logger *slog.Logger) (*keyworker.HSM, error) {
	kv, err := unseal.Open(ctx, js, c.common.topo.t)
	if err != nil {
		return nil, err
	}
	var hsm *keyworker.HSM
	cfg := unseal.Config{Pool: c.pool, Threshold: c.keyworker.unsealThreshold, MaxFailedLogins: c.keyworker.unsealMaxFailedLogins,
		Logger: logger, Now: time.Now}
	err = unseal.Await(ctx, kv, cfg, func(pin string) error {
		h, err := openHSM(ctx, c, pin, logger)
		if err != nil {
			return err
		}
		hsm = h
		return nil
	})
	return hsm, err
}

// Flags several services share; each registers them once per FlagSet.

// registerAuditSignPool: the audit service signs with this pool's HSM; the
// gateway serves that pool's audit key.
func (c *serviceConfig) registerAuditSignPool(fs *flag.FlagSet) {
	if fs.Lookup("audit-sign-pool") == nil {
		fs.StringVar(&c.audit.signPool, "audit-sign-pool", "default", "keyworker pool whose HSM signs audit checkpoints (the gateway serves its key at /v1/audit-public-key)")
	}
}

func (c *serviceConfig) registerPool(fs *flag.FlagSet) {
	if fs.Lookup("pool") == nil {
		fs.StringVar(&c.pool, "pool", "default", "keyworker pool name (one HSM or partition); on the gateway, the pool whose signing key /v1/public-signing-key serves")
	}
}

func (c *serviceConfig) registerModel(fs *flag.FlagSet) {
	if fs.Lookup("hsm-model") == nil {
		fs.StringVar(&c.model, "hsm-model", "SoftHSMv2", "HSM model reported by XKS health (keyworker and authn)")
	}
}

// s3Flags locate the S3 endpoint of the keyworker's EKT store and the audit
// export; credentials come only from the environment, never from flags
// (visible in ps).
type s3Flags struct {
	endpoint, region             string
	pathStyle                    bool
	accessKeyID, secretAccessKey string
}

func (s *s3Flags) register(fs *flag.FlagSet, getenv func(string) string) {
	if fs.Lookup("s3-endpoint") != nil {
		return
	}
	fs.StringVar(&s.endpoint, "s3-endpoint", getenv("SOVKEYS_S3_ENDPOINT"), "S3 endpoint URL of the EKT store and audit export (env SOVKEYS_S3_ENDPOINT; empty = AWS)")
	fs.StringVar(&s.region, "s3-region", envOr(getenv, "SOVKEYS_S3_REGION", "us-east-1"), "S3 region (env SOVKEYS_S3_REGION)")
	fs.BoolVar(&s.pathStyle, "s3-path-style", true, "path-style S3 addressing")
	s.accessKeyID = getenv("SOVKEYS_S3_ACCESS_KEY_ID")
	s.secretAccessKey = getenv("SOVKEYS_S3_SECRET_ACCESS_KEY")
}

// environment lists the settings read only from the environment (secrets
// and process-wide switches), for the docs.
func environment() []struct{ name, meaning string } {
	return []struct{ name, meaning string }{
		{"SOVKEYS_HSM_PIN", "keyworker: HSM user PIN (else --hsm-pin-file; else the keyworker waits for `sovkeys unseal`); never logged"},
		{"SOVKEYS_S3_ACCESS_KEY_ID, SOVKEYS_S3_SECRET_ACCESS_KEY", "keyworker and audit: S3 credentials (unset: the AWS default chain)"},
		{"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN", "authn: its own AWS credentials for STS/EC2 (unset: the AWS default chain)"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT", "every service: export traces over OTLP/gRPC when set"},
		{"SOVKEYS_PPROF_LISTEN", "standalone: serve Go's profiler on this loopback address"},
	}
}
