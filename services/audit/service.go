// Package audit consumes the audit event stream. Every operation's event is
// already durable in JetStream before its caller is answered; this service
// validates and accounts for each event. Sequencing, hash chaining, signed
// checkpoints and export build on this consumer.
package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/mesh"
	"github.com/sovkeys/sovkeys/shared/tracing"
)

// Config is the audit service's configuration.
type Config struct {
	Topology mesh.Topology
}

// Validate checks the configuration.
func (c Config) Validate() error { return c.Topology.Validate() }

// Deps are the audit service's collaborators.
type Deps struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	Logger *slog.Logger
	Tracer trace.TracerProvider
	Now    func() time.Time
}

// Stats counts consumed events by kind and result.
type Stats struct {
	Events    uint64            `json:"events"`
	Malformed uint64            `json:"malformed"`
	ByResult  map[string]uint64 `json:"by_result"`
	LastEvent time.Time         `json:"last_event"`
}

// Service is a running audit consumer.
type Service struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	tracer trace.Tracer
	now    func() time.Time

	mu    sync.Mutex
	stats Stats
}

// New builds the audit service.
func New(cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.NC == nil || deps.JS == nil || deps.Logger == nil || deps.Tracer == nil || deps.Now == nil {
		return nil, fmt.Errorf("%w: audit: missing dependency", shared.ErrConfigValidation)
	}
	return &Service{
		cfg: cfg, nc: deps.NC, js: deps.JS,
		log:    deps.Logger.With("service", "audit"),
		tracer: deps.Tracer.Tracer("sovkeys/audit"),
		now:    deps.Now,
		stats:  Stats{ByResult: map[string]uint64{}},
	}, nil
}

// Snapshot returns a copy of the counters.
func (s *Service) Snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.stats
	c.ByResult = make(map[string]uint64, len(s.stats.ByResult))
	for k, v := range s.stats.ByResult {
		c.ByResult[k] = v
	}
	return c
}

// Run consumes audit events until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	stream, err := mesh.EnsureAuditStream(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return err
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       shared.ConsumerAudit,
		Description:   "sovkeys: audit",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 4096,
	})
	if err != nil {
		return fmt.Errorf("audit: consumer: %w", err)
	}
	svc, err := micro.AddService(s.nc, micro.Config{
		Name: shared.ServiceAudit, Version: "1.0.0",
		StatsHandler: func(*micro.Endpoint) any { return s.Snapshot() },
	})
	if err != nil {
		return fmt.Errorf("audit: micro service: %w", err)
	}
	defer func() { _ = svc.Stop() }()
	cc, err := cons.Consume(func(m jetstream.Msg) { s.handle(ctx, m) },
		jetstream.PullMaxMessages(512),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if !errors.Is(err, jetstream.ErrNoHeartbeat) {
				s.log.Warn("consume", "err", err)
			}
		}))
	if err != nil {
		return fmt.Errorf("audit: consume: %w", err)
	}
	s.log.Info("audit ready")
	<-ctx.Done()
	cc.Drain()
	<-cc.Closed()
	return nil
}

func (s *Service) handle(ctx context.Context, m jetstream.Msg) {
	ev, err := shared.UnmarshalAuditEvent(m.Data())
	if err != nil {
		s.mu.Lock()
		s.stats.Malformed++
		s.mu.Unlock()
		s.log.Error("malformed audit event kept in stream for inspection", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	ctx = tracing.Extract(ctx, nats.Header(m.Headers()))
	_, span := s.tracer.Start(ctx, "audit "+string(ev.API), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("sovkeys.request_id", ev.RequestID), attribute.String("sovkeys.result", ev.Result)))
	defer span.End()
	s.mu.Lock()
	s.stats.Events++
	s.stats.ByResult[ev.Kind+"/"+ev.Result]++
	s.stats.LastEvent = ev.End
	s.mu.Unlock()
	s.log.Debug("audit event", "request_id", ev.RequestID, "kms_request_id", ev.KMSRequestID, "api", ev.API,
		"service", ev.Service, "result", ev.Result, "code", ev.Code)
	_ = m.Ack()
}
