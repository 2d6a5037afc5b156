// Package keyworker is the HSM sidecar: it owns a PKCS#11 session pool and
// pulls authorised work from its pool's JetStream work queue, never holding
// more messages in flight than it has HSM sessions.
package keyworker

import (
	"context"
	"crypto/ecdh"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
	"github.com/sovkeys/sovkeys/shared/infra/tracing"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// Config is the keyworker's configuration.
type Config struct {
	Pool     string        // keyworker pool (one HSM, or one HSM partition)
	Model    string        // reported in XKS health, e.g. "SoftHSMv2"
	Topology mesh.Topology // stream sizes and replicas
	// HealthTTL bounds how long an HSM health result is reused (<= 60 s).
	HealthTTL time.Duration
	// AuditEd25519 adds an Ed25519 log signature to audit checkpoints
	// where the HSM has CKM_EDDSA (admin_audit_ed25519.go). Off by default:
	// SoftHSM 2.6 cannot wrap an EdDSA private key, so export-keys cannot
	// back that key up (docs/audit.md).
	AuditEd25519 bool
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case !shared.ValidPoolName(c.Pool):
		return fmt.Errorf("%w: pool %q must be 1-32 chars of [a-z0-9_]", shared.ErrConfigValidation, c.Pool)
	case c.HealthTTL <= 0 || c.HealthTTL > time.Minute:
		return fmt.Errorf("%w: health ttl must be in (0, 60s]", shared.ErrConfigValidation)
	}
	return c.Topology.Validate()
}

// Deps are the keyworker's collaborators.
type Deps struct {
	NC  *nats.Conn
	JS  jetstream.JetStream
	HSM *HSM
	// EKTs is the write-once store of tenant master keys (volume secrets).
	EKTs   writeonce.Store
	Logger *slog.Logger
	Tracer trace.TracerProvider
	Now    func() time.Time
}

// Service is a running keyworker.
type Service struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	hsm    *HSM
	store  writeonce.Store
	ekts   *ektCache
	caCert *x509.Certificate
	kill   *killswitch.Watcher
	log    *slog.Logger
	tracer trace.Tracer
	now    func() time.Time

	audit    *mesh.AuditBatcher // group commit of the work's audit events
	refusals *mesh.RefusalLog   // expired work, counted and logged at a bounded rate

	desk   *roster.Desk         // people's signed admin requests (admin_people.go)
	work   *shared.WorkVerifier // authn's work signatures (worksig.go)
	boxKey *ecdh.PrivateKey     // the pool's box key, seal requests are encrypted to (answers.go)
	reg    regOnce              // the key registry (key version scopes), bound on first use

	healthMu  sync.Mutex
	healthAt  time.Time
	healthErr error
}

// New builds a keyworker.
func New(cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.NC == nil || deps.JS == nil || deps.HSM == nil || deps.Logger == nil || deps.Tracer == nil || deps.Now == nil {
		return nil, fmt.Errorf("%w: keyworker: missing dependency", shared.ErrConfigValidation)
	}
	if deps.EKTs == nil {
		return nil, errNoStore
	}
	log := deps.Logger.With("service", "keyworker", "pool", cfg.Pool)
	s := &Service{
		cfg: cfg, nc: deps.NC, js: deps.JS, hsm: deps.HSM, store: deps.EKTs, ekts: newEKTCache(4096),
		refusals: mesh.NewRefusalLog(shared.AuditServiceKeyworker, log, deps.Now, 0),
		log:      log,
		tracer:   deps.Tracer.Tracer("sovkeys/keyworker"),
		now:      deps.Now,
	}
	s.desk = s.newDesk()
	s.work = &shared.WorkVerifier{Pool: cfg.Pool, Now: deps.Now, Open: s.openWorkSession}
	return s, nil
}

// Run declares the pool's queue, serves admin requests and executes work
// until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	streams, err := mesh.EnsureWorkStreams(ctx, s.js, s.cfg.Pool, s.cfg.Topology)
	if err != nil {
		return err
	}
	if _, err := mesh.EnsureAuditStreams(ctx, s.js, s.cfg.Topology); err != nil {
		return err
	}
	if err := s.watchWorkKeys(ctx); err != nil { // worksig.go
		return err
	}
	// The pool's HSM budget is shared by its sibling work streams; each
	// consumer takes only its stream's work subjects of this pool.
	cons, err := mesh.CreateFilteredConsumers(ctx, streams, func(i int) string {
		return shared.WorkSubjectOn(i, s.cfg.Pool, "") + ">"
	}, jetstream.ConsumerConfig{
		Durable:       shared.WorkConsumer(s.cfg.Pool),
		Description:   "sovkeys: keyworkers of pool " + s.cfg.Pool,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       10 * time.Second,
		MaxDeliver:    3,
		MaxAckPending: mesh.ShareOf(s.cfg.Topology.WorkBudget, len(streams)),
	})
	if err != nil {
		return fmt.Errorf("keyworker: consumer: %w", err)
	}
	if s.kill, err = killswitch.Watch(ctx, s.js, s.cfg.Topology, s.log); err != nil {
		return err
	}
	if err := s.publishPKI(ctx); err != nil {
		return err
	}
	admin, err := s.startAdmin()
	if err != nil {
		return err
	}
	defer func() { _ = admin.Stop() }()
	if err := s.registerPool(ctx); err != nil {
		return err
	}

	sessions := s.hsm.Sessions()
	// HSM operations in flight are bounded by the sessions (the HSM's
	// session pool); work in flight by the consumer's share of the pool
	// budget, which JetStream enforces: a handler waiting for its audit ack
	// holds no session, and the more of them wait together the more events
	// share one audit message (mesh.AuditBatcher).
	inFlight := max(sessions, mesh.ShareOf(s.cfg.Topology.WorkBudget, len(streams)))
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	// The batcher outlives the handlers: work in flight at shutdown still
	// gets its audit record before its answer.
	var stopAudit func()
	s.audit, stopAudit = mesh.StartAuditBatcher(s.js, shared.AuditServiceKeyworker)
	defer stopAudit()
	wg.Add(1)
	go func() { defer wg.Done(); s.keepAlive(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); s.autoRotate(ctx) }() // rotation.go
	cc, err := mesh.ConsumeAll(cons, func(m jetstream.Msg) {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			s.handle(ctx, m)
		}()
	}, jetstream.PullMaxMessages(inFlight), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if !errors.Is(err, jetstream.ErrNoHeartbeat) {
			s.log.Warn("consume", "err", err)
		}
	}))
	if err != nil {
		return fmt.Errorf("keyworker: consume: %w", err)
	}
	s.log.Info("keyworker ready", "sessions", sessions, "budget", s.cfg.Topology.WorkBudget, "work_streams", len(streams))
	metrics.HSMSessions(s.cfg.Pool, sessions)
	metrics.UnsealInit(s.cfg.Pool) // unsealed: the sealed and locked gauges read 0
	go metrics.WatchWorkQueue(ctx, s.cfg.Pool, cons, 2*time.Second)
	<-ctx.Done()
	cc.Drain()
	cc.Wait()
	wg.Wait()
	return nil
}

// keepAliveEvery: how often idle HSM sessions are checked (and kept from
// HSM idle timeouts, which are minutes long on the HSMs we know).
const keepAliveEvery = 30 * time.Second

// keepAlive checks idle sessions until ctx ends.
func (s *Service) keepAlive(ctx context.Context) {
	t := time.NewTicker(keepAliveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n, err := s.hsm.KeepAlive(ctx); err != nil {
			s.log.Warn("hsm keep-alive: sessions could not be replaced", "err", err)
		} else if n > 0 {
			s.log.Warn("hsm keep-alive replaced lost idle sessions", "replaced", n)
		}
	}
}

// registerPool records the pool in KV so XKS health lists it.
func (s *Service) registerPool(ctx context.Context) error {
	kv, err := mesh.EnsureBucket(ctx, s.js, shared.BucketPools, "sovkeys: keyworker pools", s.cfg.Topology)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, s.cfg.Pool, []byte(s.cfg.Model)); err != nil {
		return fmt.Errorf("keyworker: register pool: %w", err)
	}
	return nil
}

func (s *Service) handle(ctx context.Context, m jetstream.Msg) {
	start := s.now()
	env, err := shared.UnmarshalEnvelope(m.Data())
	if err != nil || env.Authz == nil {
		if err == nil { // logged at a bounded rate, audited and dropped (worksig.go)
			err = shared.NewError(shared.CodeValidation, "work without an authorization")
		}
		s.refuseWork(ctx, m, nil, fmt.Errorf("%w: %v", shared.ErrWorkSignature, err))
		return
	}
	md, _ := m.Metadata()               // parsed once: the replay check and the hop times
	if !s.verifyWork(ctx, m, md, env) { // worksig.go: audited and dropped
		return
	}
	ctx = tracing.Extract(ctx, nats.Header(m.Headers()))
	ctx, span := s.tracer.Start(ctx, "keyworker "+string(env.API), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("sovkeys.request_id", env.ID), attribute.String("sovkeys.pool", s.cfg.Pool)))
	defer span.End()
	// The request's logger is made only when something is logged: With
	// formats its attributes at once, on every request otherwise.
	log := func() *slog.Logger {
		return s.log.With("request_id", env.ID, "kms_request_id", env.Authz.KMSRequestID, "api", env.API)
	}

	ev := &shared.AuditEvent{
		RequestID: env.ID, Kind: shared.AuditKindXKS, Scope: env.KeyStore, API: env.API,
		Service: shared.AuditServiceKeyworker, Start: start, CallerType: env.Authz.CallerType, CallerID: env.Authz.CallerID,
		Principal: env.Authz.Principal, SourceIP: env.Evidence.SourceIP, KeyID: env.KeyID,
		KMSRequestID: env.Authz.KMSRequestID, KMSOperation: env.Authz.KMSOperation,
		TraceID: tracing.TraceID(ctx), Params: map[string]string{"pool": s.cfg.Pool},
	}
	if env.Authz.Tenant != "" { // volume-secret call
		ev.Kind, ev.Scope = shared.AuditKindTenant, env.Authz.Tenant
	}
	if env.Expired(start) {
		// The caller has been answered with a timeout already: never touch
		// the HSM for work nobody waits for.
		ev.Result, ev.Code, ev.Reason = shared.ResultExpired, shared.CodeDependencyTimeout, "deadline passed before the hsm was reached"
		ev.End = s.now()
		if err := s.audit.Publish(ctx, ev); err != nil {
			log().Error("audit publish failed", "err", err)
			_ = m.Nak()
			return
		}
		s.refusals.Note(metrics.ReasonDeadline, "dropped expired work without touching the hsm", "request_id", env.ID, "api", env.API,
			"late_ms", start.Sub(env.Deadline).Milliseconds())
		_ = m.Ack()
		return
	}
	var body []byte
	opErr := s.stopped(env)
	if opErr == nil {
		opCtx, cancel := context.WithDeadline(ctx, env.Deadline)
		body, opErr = s.execute(opCtx, env, ev.Params)
		cancel()
	}
	ev.End = s.now()
	ev.Result = shared.ResultSuccess
	if opErr != nil {
		ev.Result, ev.Code, ev.Reason = shared.ResultFailure, shared.CodeOf(opErr), shared.MessageOf(opErr)
		span.SetStatus(codes.Error, string(ev.Code))
		switch ev.Code {
		case shared.CodeInternal:
			log().Error("operation failed", "err", opErr)
		case shared.CodeDependencyTimeout, shared.CodeThrottling:
			// Every 503 and 429 says why: counted, logged at a bounded rate.
			reason := metrics.ReasonTimeout
			if ev.Code == shared.CodeThrottling {
				reason = metrics.ReasonQueue
			}
			s.refusals.Note(reason, "work not done", "request_id", env.ID, "api", env.API, "code", ev.Code, "reason", ev.Reason)
		}
	}
	metrics.HSMOperation(s.cfg.Pool, env.API, ev.Code, ev.End.Sub(start))
	answer := true
	if err := s.audit.Publish(ctx, ev); err != nil {
		// Fail closed: no durable audit record, no answer.
		log().Error("audit publish failed; withholding result", "err", err)
		body, opErr = nil, shared.NewError(shared.CodeInternal, "audit unavailable")
		// Another run of this very work (a copy stored on two work
		// siblings by a failover, shared/infra/mesh/hedge.go) recorded its
		// event first and answers the caller: this run's error must not
		// race that answer. (A forged event under this id earns the caller
		// a timeout instead: still no result.)
		answer = !errors.Is(err, mesh.ErrAuditDuplicate)
	}
	if answer {
		reply := mesh.NewReply(env.ReplyTo, env.ID, body, opErr)
		if ph := m.Headers().Get(mesh.HeaderPhases); ph != "" { // the gateway's slow-answer log
			stored := start
			if md != nil {
				stored = md.Timestamp
			}
			reply.Header.Set(mesh.HeaderPhases, mesh.AppendPhases(ph, stored, start, ev.End, s.now()))
		}
		if err := s.nc.PublishMsg(reply); err != nil {
			log().Error("reply failed", "err", err)
		}
	}
	if err := m.Ack(); err != nil {
		log().Warn("ack failed", "err", err)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		log().Debug("work done", "result", ev.Result, "code", ev.Code, "ms", ev.End.Sub(start).Milliseconds())
	}
}

// stopped drops in-flight work whose scope was killed after authn let it
// through: the HSM is never reached.
func (s *Service) stopped(env *shared.Envelope) error {
	if env.Authz.Tenant != "" {
		if stop, why := s.kill.Engaged(killswitch.ScopeTenant, env.Authz.Tenant); stop {
			return shared.NewError(shared.CodeAccessDenied, "kill switch engaged (%s)", why)
		}
		return nil
	}
	if stop, why := s.kill.Engaged(killswitch.ScopeKeystore, env.KeyStore); stop {
		if env.API == shared.APIXKSMetadata {
			env.Authz.KeyStatus = registry.StatusDisabled
			return nil
		}
		return shared.NewError(shared.CodeInvalidState, "kill switch engaged (%s)", why)
	}
	return nil
}

func (s *Service) execute(ctx context.Context, env *shared.Envelope, params map[string]string) ([]byte, error) {
	switch env.API {
	case shared.APIXKSMetadata:
		return s.xksMetadata(ctx, env)
	case shared.APIXKSEncrypt:
		return s.xksEncrypt(ctx, env, params)
	case shared.APIXKSDecrypt:
		return s.xksDecrypt(ctx, env, params)
	case shared.APIVSGenerate:
		return s.vsGenerate(ctx, env, params)
	case shared.APIVSDecrypt:
		return s.vsDecrypt(ctx, env, params)
	case shared.APIVSConvert:
		return s.vsConvert(ctx, env, params)
	}
	return nil, shared.NewError(shared.CodeUnsupportedOperation, "unsupported operation %q", env.API)
}

// healthCheckTimeout bounds the HSM round trip of a health check, below
// what authn waits for a pool's answer (2 s), so a dead HSM is reported
// UNAVAILABLE rather than not at all.
const healthCheckTimeout = 1500 * time.Millisecond

// health runs (or reuses, within HealthTTL) a real HSM round trip.
func (s *Service) health(ctx context.Context) error {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	if !s.healthAt.IsZero() && s.now().Sub(s.healthAt) < s.cfg.HealthTTL {
		return s.healthErr
	}
	hctx, cancel := context.WithTimeout(ctx, healthCheckTimeout)
	s.healthErr = s.hsm.HealthCheck(hctx)
	cancel()
	s.healthAt = s.now()
	if s.healthErr != nil {
		s.log.Error("hsm health check failed", "err", s.healthErr)
	}
	return s.healthErr
}
