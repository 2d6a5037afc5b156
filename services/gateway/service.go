// Package gateway is the HTTPS front of sovkeys. It frames each HTTP request
// into an envelope, publishes it to JetStream for authn, and waits for the
// answer on one long-lived reply subscription. It holds no state of its own;
// run as many as needed.
package gateway

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
	"github.com/sovkeys/sovkeys/shared/infra/ratelimit"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// Config is the gateway's configuration.
type Config struct {
	Listen   string // host:port of the HTTPS listener
	CertFile string // PEM server certificate chain
	KeyFile  string // PEM private key
	// RequestTimeout is how long a request may take end to end; it travels
	// in the envelope as the deadline. AWS KMS itself waits 250 ms.
	RequestTimeout time.Duration
	Topology       mesh.Topology
	// VolumePool is the keyworker pool whose signing key
	// /v1/public-signing-key serves.
	VolumePool string
	// AuditSignPool is the keyworker pool whose HSM signs audit checkpoints
	// (the audit service's SignPool): /v1/audit-public-key serves its key.
	// Empty means "default", the audit service's default.
	AuditSignPool string
	// RatePerIP and BurstPerIP bound requests per source address before
	// any work is done (0 disables). AWS KMS sends up to 1,800 req/s per key
	// store, from several addresses.
	RatePerIP  float64
	BurstPerIP int
	// TrustedProxy takes the caller's source IP and VPC id from headers
	// set by trusted proxies (proxy.go; off by default).
	TrustedProxy TrustedProxyConfig
	// MaxInMesh bounds the XKS requests this gateway has in the mesh at
	// once, and the volume-secret requests apart from them; more wait in a
	// queue bounded by time (admission.go). 0: the
	// default (DefaultMaxInMesh); < 0: no admission control.
	MaxInMesh int
	// AdmitWithin: an XKS request is admitted only if it is expected to be
	// answered within this of its arrival (and before its deadline);
	// otherwise it is refused at once with 429 ThrottlingException. 0: the
	// default (DefaultAdmitWithin). KMS waits 250 ms for an XKS call.
	AdmitWithin time.Duration
	// MaxConns and ConnRate bound open client connections and new ones
	// (TLS handshakes) per second; past them accepting waits (conns.go).
	// 0: the defaults; < 0: none.
	MaxConns int
	ConnRate float64
}

// Admission defaults.
const (
	DefaultMaxInMesh   = 64
	DefaultAdmitWithin = 150 * time.Millisecond
	DefaultMaxConns    = 4096
	DefaultConnRate    = 200
)

func (c Config) withDefaults() Config {
	if c.MaxInMesh == 0 {
		c.MaxInMesh = DefaultMaxInMesh
	}
	if c.AdmitWithin == 0 {
		c.AdmitWithin = DefaultAdmitWithin
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.ConnRate == 0 {
		c.ConnRate = DefaultConnRate
	}
	return c
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Listen == "":
		return fmt.Errorf("%w: gateway listen address is required", shared.ErrConfigValidation)
	case c.CertFile == "" || c.KeyFile == "":
		return fmt.Errorf("%w: gateway tls certificate and key are required", shared.ErrConfigValidation)
	case !shared.ValidPoolName(c.VolumePool):
		return fmt.Errorf("%w: volume pool %q", shared.ErrConfigValidation, c.VolumePool)
	case c.AuditSignPool != "" && !shared.ValidPoolName(c.AuditSignPool):
		return fmt.Errorf("%w: audit sign pool %q", shared.ErrConfigValidation, c.AuditSignPool)
	case c.RequestTimeout < 10*time.Millisecond || c.RequestTimeout > time.Minute:
		return fmt.Errorf("%w: request timeout must be in [10ms, 1m]", shared.ErrConfigValidation)
	case c.AdmitWithin < 0 || c.AdmitWithin > time.Minute:
		return fmt.Errorf("%w: admit-within must be in [0, 1m]", shared.ErrConfigValidation)
	case c.MaxInMesh > 1<<20 || c.MaxConns > 1<<20:
		return fmt.Errorf("%w: max-in-mesh and max-conns must be at most %d", shared.ErrConfigValidation, 1<<20)
	}
	if err := c.TrustedProxy.Validate(); err != nil {
		return err
	}
	return c.Topology.Validate()
}

// Deps are the gateway's collaborators.
type Deps struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	Logger *slog.Logger
	Tracer trace.TracerProvider
	Now    func() time.Time
	// Listener, when set, is used instead of listening on Config.Listen
	// (tests pass a listener on port 0).
	Listener net.Listener
}

// Service is a running gateway.
type Service struct {
	cfg      Config
	nc       *nats.Conn
	js       jetstream.JetStream
	log      *slog.Logger
	tracer   trace.Tracer
	now      func() time.Time
	listener net.Listener
	id       string
	replies  *replyMux
	audit    *mesh.AuditBatcher // timeouts and throttling: many at once under overload
	admit    *admission         // XKS; nil: no admission control (admission.go)
	slowLog  *rate.Limiter      // slow-answer log lines (xks.go noteSlow)
	admitVS  *admission         // volume secrets; nil: none
	refusals *mesh.RefusalLog

	keystores *registry.Cache[registry.Keystore]
	pki       jetstream.KeyValue
	pins      jetstream.KeyValue // pool signing keys, pinned write-once
	kill      *killswitch.Watcher
	noise     *mesh.NoiseAuditor // refusals before authentication

	readyMu sync.Mutex
	readyAt time.Time
	readyOK bool
	addr    chan string
}

// New builds a gateway.
func New(cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.NC == nil || deps.JS == nil || deps.Logger == nil || deps.Tracer == nil || deps.Now == nil {
		return nil, fmt.Errorf("%w: gateway: missing dependency", shared.ErrConfigValidation)
	}
	cfg = cfg.withDefaults()
	var admit, admitVS *admission
	if cfg.MaxInMesh > 0 {
		admit = newAdmission(cfg.MaxInMesh, min(cfg.AdmitWithin, cfg.RequestTimeout)/2, deps.Now)
		admitVS = newAdmission(cfg.MaxInMesh, cfg.RequestTimeout/2, deps.Now)
	}
	log := deps.Logger.With("service", "gateway")
	return &Service{
		admit: admit, admitVS: admitVS, refusals: mesh.NewRefusalLog(shared.AuditServiceGateway, log, deps.Now, 0),
		slowLog: rate.NewLimiter(slowLogRate, 2*slowLogRate),
		cfg:     cfg, nc: deps.NC, js: deps.JS,
		log:      log,
		tracer:   deps.Tracer.Tracer("sovkeys/gateway"),
		now:      deps.Now,
		listener: deps.Listener,
		id:       newID()[:16],
		replies:  newReplyMux(),
		addr:     make(chan string, 1),
	}, nil
}

// Addr returns the listening address once Run has bound it.
func (s *Service) Addr(ctx context.Context) (string, error) {
	select {
	case a := <-s.addr:
		s.addr <- a
		return a, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// replySubject is this instance's inbox: sovkeys.reply.<nats user>.<id>,
// under the prefix its NATS user alone may subscribe to.
func (s *Service) replySubject() string { return mesh.ReplySubjectPrefix(s.nc) + s.id }

// Run serves HTTPS until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	// Binding the request and audit streams tells the publishers how many
	// siblings to spread over (mesh/siblings.go).
	if _, err := mesh.EnsureRequestStreams(ctx, s.js, s.cfg.Topology); err != nil {
		return err
	}
	if _, err := mesh.EnsureAuditStreams(ctx, s.js, s.cfg.Topology); err != nil {
		return err
	}
	reg, err := registry.Open(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return err
	}
	if s.keystores, err = registry.WatchBucket[registry.Keystore](ctx, reg.Keystores, s.log, nil); err != nil {
		return err
	}
	if s.pki, err = mesh.EnsureBucket(ctx, s.js, shared.BucketPKI, "sovkeys: public keys and CA certificates", s.cfg.Topology); err != nil {
		return err
	}
	if s.pins, err = mesh.BindPins(ctx, s.js, s.cfg.Topology); err != nil {
		return err
	}
	if s.kill, err = killswitch.Watch(ctx, s.js, s.cfg.Topology, s.log); err != nil {
		return err
	}
	var stopAudit func()
	s.audit, stopAudit = mesh.StartAuditBatcher(s.js, shared.AuditServiceGateway)
	defer stopAudit() // runs after srv.Shutdown at the end of Run: handlers are done
	s.noise = mesh.NewNoiseAuditor(s.js, shared.AuditServiceGateway, 0, s.log, s.now)
	nctx, stopNoise := context.WithCancel(ctx)
	noiseDone := make(chan struct{})
	go func() { defer close(noiseDone); s.noise.Run(nctx) }()
	defer func() { stopNoise(); <-noiseDone }()
	sub, err := s.nc.Subscribe(s.replySubject(), s.replies.deliver)
	if err != nil {
		return fmt.Errorf("gateway: reply subscription: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	svc, err := micro.AddService(s.nc, micro.Config{Name: shared.ServiceGateway, Version: "1.0.0"})
	if err != nil {
		return fmt.Errorf("gateway: micro service: %w", err)
	}
	defer func() { _ = svc.Stop() }()

	cert, err := tls.LoadX509KeyPair(s.cfg.CertFile, s.cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("gateway: tls: %w", err)
	}
	if cert.Leaf != nil { // alert CredentialExpiresSoon
		metrics.CredentialExpiry("gateway", "tls_certificate", cert.Leaf.NotAfter)
	}
	srv := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			// Instances may present a client certificate; the TLS handshake
			// proves possession of its key and authn verifies the chain
			// against the instance CA held in KV.
			ClientAuth: tls.RequestClientCert,
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	ln := s.listener
	if ln == nil {
		if ln, err = net.Listen("tcp", s.cfg.Listen); err != nil {
			return fmt.Errorf("gateway: listen: %w", err)
		}
	}
	ln = limitConns(ln, s.cfg.MaxConns, s.cfg.ConnRate, s.now) // conns.go
	s.addr <- ln.Addr().String()
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	s.log.Info("gateway listening", "addr", ln.Addr().String(), "id", s.id)
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("gateway: serve: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

func (s *Service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.handleHealthz)
	mux.HandleFunc("/healthcheck", s.handleHealthcheck)
	mux.HandleFunc("/v1/public-signing-key", s.handlePublicSigningKey)
	mux.HandleFunc("/v1/audit-public-key", s.handleAuditPublicKey)
	mux.HandleFunc("/v1/encryption/", s.handleVS)
	mux.HandleFunc("/", s.handleXKS)
	limiter := ratelimit.New(s.cfg.RatePerIP, s.cfg.BurstPerIP)
	return instrument(s.now, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ip, _ := s.origin(r); !limiter.Allow(ip) {
			s.refusals.Note(metrics.ReasonRateLimit, "request refused: address rate exceeded", "source_ip", ip)
			err := shared.NewError(shared.CodeThrottling, "too many requests from this address, retry later")
			if strings.HasPrefix(r.URL.Path, "/v1/") {
				writeVSError(w, err)
			} else {
				writeXKSError(w, err)
			}
			return
		}
		mux.ServeHTTP(w, r)
	}))
}

// ready reports, cached for a second, whether the gateway's state is
// current and authn, a keyworker and audit answer pings on the mesh.
func (s *Service) ready(ctx context.Context) bool {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	if !s.readyAt.IsZero() && s.now().Sub(s.readyAt) < time.Second {
		return s.readyOK
	}
	ok := s.nc.IsConnected() && s.fresh() == nil
	for _, name := range []string{shared.ServiceAuthn, shared.ServiceKeyworker, shared.ServiceAudit} {
		if !ok {
			break
		}
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := s.nc.RequestWithContext(pctx, "$SRV.PING."+name, nil)
		cancel()
		ok = err == nil
	}
	s.readyAt, s.readyOK = s.now(), ok
	return ok
}

func (s *Service) handleHealthz(w http.ResponseWriter, r *http.Request) {
	if s.ready(r.Context()) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return
	}
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready"})
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
