// Package authn verifies every caller before work reaches an HSM: SigV4 for
// XKS key stores, request validation, the key store's secondary
// authorization policy and key state. Authorised work is forwarded to the
// key's keyworker pool; denials are answered and audited here.
package authn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
	"github.com/sovkeys/sovkeys/shared/infra/ratelimit"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
	"github.com/sovkeys/sovkeys/shared/infra/tracing"
)

// Config is authn's configuration.
type Config struct {
	Topology mesh.Topology
	// MaxSkew is the SigV4 clock skew tolerance (the XKS spec: 5 minutes).
	MaxSkew time.Duration
	// Concurrency bounds requests verified at once by this process.
	Concurrency int
	// RatePerCaller/BurstPerCaller bound XKS requests per access key id
	// (AWS KMS sends at most 1,800 req/s per key store); VSRatePerCaller/
	// VSBurstPerCaller bound volume-secret calls per instance. 0 disables.
	RatePerCaller    float64
	BurstPerCaller   int
	VSRatePerCaller  float64
	VSBurstPerCaller int
	// Vendor and model strings reported by XKS health.
	ProxyModel string
	EKMVendor  string
	// AWS configures AWS instance identity for volume secrets (off when
	// AWS.ServerID is empty); see awsid.go.
	AWS AWSConfig
	// KeyDeletion bounds scheduled key deletion (keydeletion.go).
	KeyDeletion KeyDeletionConfig
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.MaxSkew <= 0 || c.MaxSkew > 15*time.Minute:
		return fmt.Errorf("%w: max skew must be in (0, 15m]", shared.ErrConfigValidation)
	case c.Concurrency < 1:
		return fmt.Errorf("%w: concurrency must be positive", shared.ErrConfigValidation)
	}
	if err := c.AWS.Validate(); err != nil {
		return err
	}
	if err := c.KeyDeletion.Validate(); err != nil {
		return err
	}
	return c.Topology.Validate()
}

// Deps are authn's collaborators.
type Deps struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	Logger *slog.Logger
	Tracer trace.TracerProvider
	Now    func() time.Time
	// AWSCredentials are authn's own AWS credentials (AssumeRole into
	// tenants' roles); nil: the SDK's default chain. AWSHTTPClient, when
	// set, carries every AWS call.
	AWSCredentials aws.CredentialsProvider
	AWSHTTPClient  aws.HTTPClient
	// WorkSigner signs every work item authn queues (shared/envelope_sig.go);
	// keyworkers refuse work not signed by a key pinned in the roster.
	WorkSigner *shared.WorkSigner
}

// Service is a running authn.
type Service struct {
	cfg      Config
	nc       *nats.Conn
	js       jetstream.JetStream
	log      *slog.Logger
	tracer   trace.Tracer
	now      func() time.Time
	verifier SigV4Verifier

	keystores *registry.Cache[registry.Keystore]
	keys      *registry.Cache[registry.Key]
	pools     jetstream.KeyValue
	secrets   *secretCache
	xksLimit  *ratelimit.Limiter
	vsLimit   *ratelimit.Limiter
	tenants   *registry.Cache[registry.Tenant]
	cas       *caPool
	verified  verifiedCerts
	nonces    *vs.NonceCache // request-signature nonces seen (vssig.go)
	kill      *killswitch.Watcher
	aws       *awsVerifier       // nil unless AWS instance identity is configured (awsid.go)
	audit     *mesh.AuditBatcher // request events: several per message under load
	refusals  *mesh.RefusalLog
	authFail  *mesh.FailedAuthAuditor // failed SigV4 per key store (Run)
	awsDeps   Deps
	desk      *roster.Desk // people's signed registry changes (admin.go)
	signer    *shared.WorkSigner
	answers   *kwadmin.AnswerKeys // the pools' pinned signing keys: keyworker answers are verified
}

// New builds authn.
func New(cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.NC == nil || deps.JS == nil || deps.Logger == nil || deps.Tracer == nil || deps.Now == nil || deps.WorkSigner == nil {
		return nil, fmt.Errorf("%w: authn: missing dependency", shared.ErrConfigValidation)
	}
	log := deps.Logger.With("service", "authn")
	return &Service{
		cfg: cfg, nc: deps.NC, js: deps.JS, signer: deps.WorkSigner,
		refusals: mesh.NewRefusalLog(shared.AuditServiceAuthn, log, deps.Now, 0),
		log:      log,
		tracer:   deps.Tracer.Tracer("sovkeys/authn"),
		now:      deps.Now,
		verifier: SigV4Verifier{Service: "kms-xks-proxy", MaxSkew: cfg.MaxSkew, Now: deps.Now},
		secrets:  newSecretCache(),
		xksLimit: ratelimit.New(cfg.RatePerCaller, cfg.BurstPerCaller),
		vsLimit:  ratelimit.New(cfg.VSRatePerCaller, cfg.VSBurstPerCaller),
		nonces:   vs.NewNonceCache(nonceCacheSize),
		awsDeps:  deps,
	}, nil
}

// Run consumes requests until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	streams, err := mesh.EnsureRequestStreams(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return err
	}
	if _, err := mesh.EnsureAuditStreams(ctx, s.js, s.cfg.Topology); err != nil {
		return err
	}
	reg, err := registry.Open(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return err
	}
	if s.pools, err = mesh.EnsureBucket(ctx, s.js, shared.BucketPools, "sovkeys: keyworker pools", s.cfg.Topology); err != nil {
		return err
	}
	if s.keystores, err = registry.WatchBucket(ctx, reg.Keystores, s.log, func(key string, _ registry.Keystore) {
		s.secrets.dropStore(key) // credentials may have rotated
	}); err != nil {
		return err
	}
	if s.keys, err = registry.WatchBucket[registry.Key](ctx, reg.Keys, s.log, nil); err != nil {
		return err
	}
	tenants, err := registry.OpenTenants(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return err
	}
	if s.tenants, err = registry.WatchBucket[registry.Tenant](ctx, tenants.KV, s.log, nil); err != nil {
		return err
	}
	pki, err := mesh.EnsureBucket(ctx, s.js, shared.BucketPKI, "sovkeys: public keys and CA certificates", s.cfg.Topology)
	if err != nil {
		return err
	}
	pins, err := mesh.BindPins(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return err
	}
	s.answers = &kwadmin.AnswerKeys{KV: pins}
	if s.cas, err = watchCAs(ctx, pki, s); err != nil {
		return fmt.Errorf("authn: watch instance CAs: %w", err)
	}
	if err := s.startAWS(ctx); err != nil {
		return err
	}
	if s.kill, err = killswitch.Watch(ctx, s.js, s.cfg.Topology, s.log); err != nil {
		return err
	}
	for _, c := range []<-chan struct{}{s.keystores.Ready(), s.keys.Ready(), s.tenants.Ready()} {
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	cons, err := mesh.CreateFilteredConsumers(ctx, streams, func(i int) string {
		return shared.RequestSubjectOn(i, "") + ">"
	}, jetstream.ConsumerConfig{
		Durable:       shared.ConsumerAuthn,
		Description:   "sovkeys: authn",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       10 * time.Second,
		MaxDeliver:    3,
		MaxAckPending: 4 * s.cfg.Concurrency,
	})
	if err != nil {
		return fmt.Errorf("authn: consumer: %w", err)
	}
	// Deferred before the handlers' wait below, so it runs after it.
	var stopAudit func()
	s.audit, stopAudit = mesh.StartAuditBatcher(s.js, shared.AuditServiceAuthn)
	defer stopAudit()
	// Failed SigV4 against a real key store: one record per key store per
	// interval (mesh/failedauth.go), flushed before the batcher stops.
	s.authFail = mesh.NewFailedAuthAuditor(s.js, nil, shared.AuditServiceAuthn, 0, s.log, s.now)
	authFailDone := make(chan struct{})
	go func() { defer close(authFailDone); s.authFail.Run(ctx) }()
	defer func() { <-authFailDone }()
	sem := make(chan struct{}, s.cfg.Concurrency)
	var wg sync.WaitGroup
	cc, err := mesh.ConsumeAll(cons, func(m jetstream.Msg) {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			s.handle(ctx, m)
		}()
	}, jetstream.PullMaxMessages(s.cfg.Concurrency), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if !errors.Is(err, jetstream.ErrNoHeartbeat) {
			s.log.Warn("consume", "err", err)
		}
	}))
	if err != nil {
		return fmt.Errorf("authn: consume: %w", err)
	}
	stop, err := registerPing(s.nc, shared.ServiceAuthn)
	if err != nil {
		cc.Stop()
		return err
	}
	defer stop()
	admin, err := s.startAdmin()
	if err != nil {
		cc.Stop()
		return err
	}
	defer func() { _ = admin.Stop() }()
	go s.sweepKeyDeletions(ctx) // keydeletion.go
	s.log.Info("authn ready", "keystores", s.keystores.Len(), "keys", s.keys.Len(), "request_streams", len(streams))
	<-ctx.Done()
	cc.Drain()
	cc.Wait()
	wg.Wait()
	return nil
}

func (s *Service) handle(ctx context.Context, m jetstream.Msg) {
	start := s.now()
	env, err := shared.UnmarshalEnvelope(m.Data())
	if err != nil {
		s.log.Error("dropping malformed request", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	ctx = tracing.Extract(ctx, nats.Header(m.Headers()))
	if from := mesh.RouteOf(m.Subject(), nats.Header(m.Headers())); from > 0 {
		ctx = context.WithValue(ctx, routeKey{}, from) // forward keeps the work on this path
	}
	if md, err := m.Metadata(); err == nil { // hop times for the gateway's slow-answer log
		ctx = context.WithValue(ctx, phasesKey{}, mesh.AppendPhases("", md.Timestamp, start))
	}
	ctx, span := s.tracer.Start(ctx, "authn "+string(env.API), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("sovkeys.request_id", env.ID)))
	defer span.End()

	ev := &shared.AuditEvent{
		RequestID: env.ID, Kind: shared.AuditKindXKS, Scope: env.KeyStore, API: env.API, Service: shared.AuditServiceAuthn,
		Start: start, SourceIP: env.Evidence.SourceIP, KeyID: env.KeyID, TraceID: tracing.TraceID(ctx),
	}
	var body []byte
	expired := env.Expired(start)
	if expired {
		// The gateway has answered (and audited) the timeout: nothing is
		// verified, forwarded or answered for it, only its record kept.
		err = shared.NewError(shared.CodeDependencyTimeout, "request expired before authentication")
		ev.Result = shared.ResultExpired
	} else if err = s.fresh(); err == nil { // stale.go
		var forwarded bool
		if strings.HasPrefix(string(env.API), "vs.") {
			if err = deriveVS(env); err == nil { // derive.go
				forwarded, err = s.volumeSecret(ctx, env, ev)
			}
		} else if err = deriveXKS(env, ev); err == nil {
			forwarded, body, err = s.xks(ctx, env, ev)
		}
		if ev.KMSRequestID != "" {
			span.SetAttributes(attribute.String("sovkeys.kms_request_id", ev.KMSRequestID))
		}
		if forwarded {
			metrics.AuthnRequest(env.API, "", s.now().Sub(start))
			_ = m.Ack()
			return
		}
	}
	log := s.log.With("request_id", env.ID, "kms_request_id", ev.KMSRequestID, "api", env.API)
	ev.End = s.now()
	if err != nil {
		span.SetStatus(codes.Error, string(shared.CodeOf(err)))
		ev.Code, ev.Reason = shared.CodeOf(err), shared.MessageOf(err)
		if ev.Result == "" {
			ev.Result = shared.ResultDenied
			if ev.Code == shared.CodeInternal || ev.Code == shared.CodeDependencyTimeout || ev.Code == shared.CodeThrottling {
				ev.Result = shared.ResultFailure
			}
		}
		if reason := refusalReason(err, expired); reason != "" {
			// Load and state refusals come in floods: counted, logged at a bounded rate.
			s.refusals.Note(reason, "request refused", "request_id", env.ID, "api", env.API, "code", ev.Code, "reason", ev.Reason)
		} else {
			log.Info("request refused", "code", ev.Code, "reason", ev.Reason, "caller", ev.CallerID)
		}
		if ev.Code == shared.CodeInternal {
			log.Error("internal error", "err", err)
		}
	} else {
		ev.Result = shared.ResultSuccess
	}
	if ev.Kind == shared.AuditKindXKS && ev.Code == shared.CodeAuthenticationFailed && s.authFail != nil {
		s.authFail.Add(ev.Scope, ev.SourceIP) // summarised per key store (mesh/failedauth.go)
	} else if aerr := s.publishAudit(ctx, ev); aerr != nil {
		log.Error("audit publish failed; withholding answer", "err", aerr)
		body, err = nil, shared.NewError(shared.CodeDependencyTimeout, "audit unavailable")
	}
	if err != nil {
		metrics.AuthnRequest(env.API, shared.CodeOf(err), s.now().Sub(start))
	} else {
		metrics.AuthnRequest(env.API, "", s.now().Sub(start))
	}
	if !expired {
		if perr := s.nc.PublishMsg(mesh.NewReply(env.ReplyTo, env.ID, body, err)); perr != nil {
			log.Error("reply failed", "err", perr)
		}
	}
	_ = m.Ack()
}

// refusalReason names the metrics.Reason* of a refusal for load or state
// ("" for other denials, which are logged one by one).
func refusalReason(err error, expired bool) string {
	switch {
	case expired:
		return metrics.ReasonDeadline
	case shared.CodeOf(err) == shared.CodeThrottling && strings.Contains(shared.MessageOf(err), "rate"):
		return metrics.ReasonRateLimit
	case shared.CodeOf(err) == shared.CodeThrottling:
		return metrics.ReasonQueue
	case shared.CodeOf(err) == shared.CodeDependencyTimeout && strings.Contains(shared.MessageOf(err), "before the deadline"):
		return metrics.ReasonDeadline
	case shared.CodeOf(err) == shared.CodeDependencyTimeout && strings.Contains(shared.MessageOf(err), "not current"):
		return metrics.ReasonStaleState
	case shared.CodeOf(err) == shared.CodeDependencyTimeout:
		return metrics.ReasonUnavailable
	}
	return ""
}

// routeKey carries, for a request that asked for it (mesh.HeaderRoute),
// 1 + the request sibling it was consumed from: its work is published on
// that work sibling first (shared/infra/mesh/resend.go).
type routeKey struct{}

// phasesKey carries the request's hop times so far (mesh.HeaderPhases).
type phasesKey struct{}

// forward sends authorised work to the key's pool. A full pool queue
// answers ThrottlingException at once.
func (s *Service) forward(ctx context.Context, env *shared.Envelope) error {
	env.Evidence.Header = nil // credentials stop here
	env.Evidence.AWSIdentity = ""
	data, err := env.Marshal()
	if err != nil {
		return fmt.Errorf("authn: encode work: %w", err)
	}
	msg := nats.NewMsg(shared.WorkSubject(env.Authz.Pool, env.API)) // PublishWork picks the sibling
	msg.Data = data
	msg.Header.Set(shared.HeaderMsgID, env.ID)
	sig, session := s.signer.SignWork(env.Authz.Pool, env.ID, data, s.boxWorkKey(ctx)) // worksig.go
	msg.Header.Set(shared.HeaderWorkSignature, sig)
	if session != "" {
		msg.Header.Set(shared.HeaderWorkSession, session)
	}
	if ph, _ := ctx.Value(phasesKey{}).(string); ph != "" {
		msg.Header.Set(mesh.HeaderPhases, ph)
	}
	tracing.Inject(ctx, msg.Header)
	if !env.Deadline.IsZero() {
		// Retry a publish lost to a leader election while the caller waits.
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, env.Deadline)
		defer cancel()
	}
	from, _ := ctx.Value(routeKey{}).(int)
	if _, err := mesh.PublishWorkFrom(ctx, s.js, env.Authz.Pool, env.API, msg, mesh.PublishTry, from); err != nil {
		if mesh.IsQueueFull(err) {
			return shared.NewError(shared.CodeThrottling, "hsm pool %q is at capacity, retry later", env.Authz.Pool)
		}
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			return shared.NewError(shared.CodeDependencyTimeout, "hsm pool %q is unavailable", env.Authz.Pool)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			// The request's deadline passed before the pool's queue took
			// the work (an overloaded node): a timeout, not an internal
			// error, so KMS retries it as one.
			return shared.NewError(shared.CodeDependencyTimeout, "hsm pool %q did not take the work before the deadline", env.Authz.Pool)
		}
		return fmt.Errorf("authn: publish work: %w", err)
	}
	return nil
}

// publishAudit records ev through the service's batcher (mesh.AuditBatcher),
// or on its own before Run has started one.
func (s *Service) publishAudit(ctx context.Context, ev *shared.AuditEvent) error {
	if s.audit == nil {
		return mesh.PublishAudit(ctx, s.js, ev)
	}
	return s.audit.Publish(ctx, ev)
}
