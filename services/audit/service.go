// Package audit turns audit events into the customer-verifiable audit log
// (shared/infra/auditlog): it numbers every event per scope (tenant, XKS key
// store, operator log) without gaps or duplicates, links the records into a
// hash chain, has the HSM sign the chain head every second, and exports
// records and checkpoints to object storage. docs/audit.md explains why
// each guarantee holds.
package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/trace"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
	"github.com/sovkeys/sovkeys/shared/infra/tracing"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// Export backends of the central bucket.
const (
	BackendJetStream = "jetstream"
	BackendS3        = "s3"
)

// Config is the audit service's configuration. The zero value of every
// field but Topology means its default.
type Config struct {
	Topology mesh.Topology
	// SignPool is the keyworker pool whose HSM holds the audit key.
	SignPool string
	// CheckpointEvery is the checkpoint cadence while records flow (≤ 1 s).
	CheckpointEvery time.Duration
	// AckWait is how long an event may stay unacknowledged before JetStream
	// hands it to another audit process (keepalives extend it while queued).
	AckWait time.Duration
	// MaxBatch bounds the records committed in one message.
	MaxBatch int
	// SignsPerSecond bounds this process's checkpoint signatures (budget.go).
	SignsPerSecond float64
	// Central is where every record and checkpoint is exported.
	Central CentralConfig
	// TenantExport, when Enabled, also exports a tenant's records to the
	// bucket its tenant record names (AuditBucket), through the same S3
	// endpoint and credentials.
	TenantExport TenantExportConfig
	// ExportConcurrency bounds the object writes in flight per exporter.
	ExportConcurrency int
	// MaxExportBackoff caps the delay between export retries of a message.
	MaxExportBackoff time.Duration
	// LogKeepBatches is how many record batches of each scope the log
	// stream keeps (default 10,000): the window in which a redelivered
	// event is recognised as numbered, and the bound on a scope's
	// unexported records (sequencing of a scope pauses there until export
	// catches up).
	LogKeepBatches int
	// EventPurgeEvery is how often numbered events are purged from the
	// event stream (below the audit consumer's ack floor); default 10 s.
	EventPurgeEvery time.Duration
	// EventKeep is how long an event stays in the event stream after it
	// was numbered; default 1 minute.
	EventKeep time.Duration
	// Witnesses are C2SP tlog-witness URLs asked to cosign every
	// checkpoint; their cosignatures are added to the published checkpoint
	// (verifiers may require k of them). A witness that is down delays no
	// export: the checkpoint is published with the cosignatures obtained.
	Witnesses []string
	// KnownScopesOnly refuses (records as forgeries) events of a key store
	// or tenant scope the registry does not know (scopes.go).
	KnownScopesOnly bool
	// Deployment names this deployment in every checkpoint's origin line
	// ("<deployment>/audit/<kind>/<token>") and the audit key's note name
	// ("<deployment>/audit"); verifiers must be told it. Default "sovkeys".
	Deployment string
}

// CentralConfig selects the central export bucket.
type CentralConfig struct {
	Backend string             // BackendJetStream (default) or BackendS3
	S3      writeonce.S3Config // with BackendS3; Prefix defaults to "audit/"
}

// TenantExportConfig is the S3 access to tenants' own buckets; S3.Bucket is
// ignored (each tenant names its own).
type TenantExportConfig struct {
	Enabled bool
	S3      writeonce.S3Config
}

// DefaultDeployment is the default origin prefix of checkpoints.
const DefaultDeployment = "sovkeys"

// DefaultPrefix is the key prefix of exports in S3 buckets.
const DefaultPrefix = "audit/"

func (c Config) withDefaults() Config {
	if c.SignPool == "" {
		c.SignPool = "default"
	}
	if c.CheckpointEvery == 0 {
		c.CheckpointEvery = time.Second
	}
	if c.AckWait == 0 {
		c.AckWait = 15 * time.Second
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 512
	}
	if c.SignsPerSecond == 0 {
		c.SignsPerSecond = DefaultSignsPerSecond
	}
	if c.Central.Backend == "" {
		c.Central.Backend = BackendJetStream
	}
	if c.Central.S3.Prefix == "" {
		c.Central.S3.Prefix = DefaultPrefix
	}
	if c.TenantExport.S3.Prefix == "" {
		c.TenantExport.S3.Prefix = DefaultPrefix
	}
	if c.ExportConcurrency == 0 {
		c.ExportConcurrency = 32
	}
	if c.MaxExportBackoff == 0 {
		c.MaxExportBackoff = 10 * time.Second
	}
	if c.Deployment == "" {
		c.Deployment = DefaultDeployment
	}
	if c.LogKeepBatches == 0 {
		c.LogKeepBatches = 10_000
	}
	if c.EventPurgeEvery == 0 {
		c.EventPurgeEvery = 10 * time.Second
	}
	if c.EventKeep == 0 {
		c.EventKeep = time.Minute
	}
	return c
}

// Validate checks the configuration (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: audit: %s", shared.ErrConfigValidation, fmt.Sprintf(format, args...))
	}
	switch {
	case !shared.ValidPoolName(c.SignPool):
		return bad("sign pool %q", c.SignPool)
	case c.CheckpointEvery < 10*time.Millisecond || c.CheckpointEvery > time.Second:
		return bad("checkpoint cadence must be in [10ms, 1s]")
	case c.AckWait < 3*time.Second:
		return bad("ack wait must be at least 3s")
	case c.MaxBatch < 1 || c.MaxBatch > 4096:
		return bad("max batch must be 1..4096")
	case c.SignsPerSecond < 1 || c.SignsPerSecond > 10000:
		return bad("signs per second must be 1..10000")
	case c.ExportConcurrency < 1 || c.ExportConcurrency > 1024:
		return bad("export concurrency must be 1..1024")
	case c.MaxExportBackoff < 100*time.Millisecond:
		return bad("max export backoff must be at least 100ms")
	case c.LogKeepBatches <= c.MaxBatch || c.LogKeepBatches > 10_000_000:
		return bad("log keep batches must exceed the max batch and be at most 10,000,000")
	case c.EventPurgeEvery < 100*time.Millisecond || c.EventKeep < 0:
		return bad("event purge cadence must be at least 100ms, event keep not negative")
	case len(c.Witnesses) > 16:
		return bad("at most 16 witnesses")
	case !auditlog.ValidDeployment(c.Deployment):
		return bad("deployment %q: want a schema-less URL such as sovkeys.example", c.Deployment)
	}
	switch c.Central.Backend {
	case BackendJetStream:
	case BackendS3:
		if err := c.Central.S3.Validate(); err != nil {
			return err
		}
	default:
		return bad("central backend %q: want jetstream or s3", c.Central.Backend)
	}
	if c.TenantExport.Enabled {
		t := c.TenantExport.S3
		t.Bucket = "placeholder-bucket"
		if err := t.Validate(); err != nil {
			return err
		}
	}
	return c.Topology.Validate()
}

// Deps are the audit service's collaborators.
type Deps struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	Logger *slog.Logger
	Tracer trace.TracerProvider
	Now    func() time.Time
}

// Stats are the service's counters (this process) and lags (the mesh),
// served as the micro service's stats.
type Stats struct {
	Events    uint64 `json:"events"`
	Malformed uint64 `json:"malformed"`
	// Forgeries are events whose body did not match their publisher (origin.go).
	Forgeries uint64            `json:"forgeries"`
	ByResult  map[string]uint64 `json:"by_result"`
	LastEvent time.Time         `json:"last_event"`
	// Records committed, in Batches; Duplicates are redelivered events
	// found already recorded; Conflicts are commits that lost a race.
	Records    uint64 `json:"records"`
	Batches    uint64 `json:"batches"`
	Duplicates uint64 `json:"duplicates"`
	Conflicts  uint64 `json:"conflicts"`
	// ExportBehind counts commits held back because a scope's unexported
	// records reached LogKeepBatches.
	ExportBehind uint64 `json:"export_behind"`
	// SequencingLag is the events not yet numbered (whole mesh).
	SequencingLag uint64 `json:"sequencing_lag"`
	Checkpoints   uint64 `json:"checkpoints"`
	// WitnessRefusals: checkpoints a witness did not cosign.
	WitnessRefusals     uint64                  `json:"witness_refusals"`
	CheckpointErrors    uint64                  `json:"checkpoint_errors"`
	LastCheckpointError string                  `json:"last_checkpoint_error,omitempty"`
	Export              map[string]*ExportStats `json:"export"`
}

// ExportStats describe one exporter.
type ExportStats struct {
	Destination string `json:"destination"`
	Objects     uint64 `json:"objects"`
	Failures    uint64 `json:"failures"`
	Conflicts   uint64 `json:"conflicts"`
	// Lag is the log messages (record batches, checkpoints) not yet exported.
	Lag         uint64    `json:"lag"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
}

// Service is a running audit service.
type Service struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	tracer trace.Tracer
	now    func() time.Time

	logStream  jetstream.Stream
	logLimited atomic.Bool // the log stream drops old batches per scope (LogKeepBatches)
	// suspectBefore: per event stream sibling, events published earlier
	// are suspect (that sibling's consumer is younger than them).
	suspectBefore map[string]time.Time
	signer        *signer
	scopes        *scopeCheck // nil unless Config.KnownScopesOnly (scopes.go)
	tlog          *tlogExporter
	auditCons     []jetstream.Consumer // one per event stream sibling

	qmu    sync.Mutex
	queues map[auditlog.Scope]*scopeQueue
	wg     sync.WaitGroup

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
	s := &Service{
		cfg: cfg.withDefaults(), nc: deps.NC, js: deps.JS,
		log:    deps.Logger.With("service", "audit"),
		tracer: deps.Tracer.Tracer("sovkeys/audit"),
		now:    deps.Now,
		queues: make(map[auditlog.Scope]*scopeQueue),
		stats:  Stats{ByResult: map[string]uint64{}, Export: map[string]*ExportStats{}},
	}
	s.signer = &signer{s: s, budget: newSignBudget(s.cfg.SignsPerSecond)}
	return s, nil
}

func (s *Service) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

func (s *Service) countExport(name string, f func(*ExportStats)) {
	s.mu.Lock()
	x := s.stats.Export[name]
	if x == nil {
		x = &ExportStats{}
		s.stats.Export[name] = x
	}
	f(x)
	s.mu.Unlock()
}

// Snapshot returns a copy of the stats.
func (s *Service) Snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.stats
	c.ByResult = make(map[string]uint64, len(s.stats.ByResult))
	for k, v := range s.stats.ByResult {
		c.ByResult[k] = v
	}
	c.Export = make(map[string]*ExportStats, len(s.stats.Export))
	for k, v := range s.stats.Export {
		x := *v
		c.Export[k] = &x
	}
	return c
}

// Run sequences, checkpoints and exports until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	events, err := mesh.EnsureAuditStreams(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return err
	}
	if s.logStream, err = ensureLogStream(ctx, s.js, s.cfg.Topology, int64(s.cfg.LogKeepBatches)); err != nil {
		return err
	}
	s.logLimited.Store(s.logStream.CachedInfo().Config.MaxMsgsPerSubject > 0)
	if err := s.setupExporter(ctx); err != nil {
		return err
	}
	if s.cfg.KnownScopesOnly {
		if s.scopes, err = newScopeCheck(ctx, s.js); err != nil {
			return fmt.Errorf("audit: registry: %w", err)
		}
	}
	s.auditCons, err = mesh.CreateFilteredConsumers(ctx, events, func(i int) string {
		return shared.SiblingPrefix(shared.SubjectAuditPrefix, i) + ">"
	}, jetstream.ConsumerConfig{
		Durable:       shared.ConsumerAudit,
		Description:   "sovkeys: audit",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 8192,
	})
	if err != nil {
		return fmt.Errorf("audit: consumer: %w", err)
	}
	// Events older than the consumer may have been numbered through an
	// earlier one (the margin covers clock differences between leaders).
	s.suspectBefore = map[string]time.Time{}
	for _, c := range s.auditCons {
		info := c.CachedInfo()
		s.suspectBefore[info.Stream] = info.Created.Add(2 * time.Second)
	}
	svc, err := s.startMicro(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = svc.Stop() }()

	loops, stopLoops := context.WithCancel(context.WithoutCancel(ctx))
	s.wg.Add(5 + len(events))
	go s.applyLogLimit(loops)
	go s.tlog.run(loops)
	for i, ev := range events {
		go s.purgeEvents(loops, ev, s.auditCons[i])
	}
	go s.publishKey(loops)
	go s.keepalive(loops)
	go s.watchLag(loops)
	cc, err := mesh.ConsumeAll(s.auditCons, func(m jetstream.Msg) {
		tracing.Received(loops, s.tracer, "audit receive", nats.Header(m.Headers())) // joins the request's trace
		s.dispatch(loops, m)
	},
		jetstream.PullMaxMessages(1024),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if !errors.Is(err, jetstream.ErrNoHeartbeat) {
				s.log.Warn("consume", "err", err)
			}
		}))
	if err != nil {
		stopLoops()
		s.wg.Wait()
		return fmt.Errorf("audit: consume: %w", err)
	}
	s.log.Info("audit ready", "central", s.tlog.central.String(), "sign_pool", s.cfg.SignPool, "deployment", s.cfg.Deployment)
	<-ctx.Done()
	cc.Stop()
	cc.Wait()
	stopLoops() // queued events stay unacked: JetStream redelivers them
	s.wg.Wait()
	return nil
}

// startMicro registers the stats and the on-demand checkpoint endpoint.
func (s *Service) startMicro(ctx context.Context) (micro.Service, error) {
	svc, err := micro.AddService(s.nc, micro.Config{
		Name: shared.ServiceAudit, Version: "1.0.0",
		StatsHandler: func(*micro.Endpoint) any { return s.Snapshot() },
	})
	if err != nil {
		return nil, fmt.Errorf("audit: micro service: %w", err)
	}
	g := svc.AddGroup(auditlog.SubjectControlPrefix, micro.WithGroupQueueGroup("audit"))
	err = g.AddEndpoint(auditlog.EndpointCheckpoint, micro.HandlerFunc(func(req micro.Request) {
		s.handleCheckpoint(ctx, req)
	}))
	if err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("audit: micro endpoint: %w", err)
	}
	return svc, nil
}

func (s *Service) handleCheckpoint(ctx context.Context, req micro.Request) {
	var r auditlog.CheckpointRequest
	if err := decodeJSON(req.Data(), &r); err != nil {
		_ = req.Error(string(shared.CodeValidation), "malformed checkpoint request", nil)
		return
	}
	sc := auditlog.Scope{Kind: r.Kind, ID: r.Scope}
	if err := sc.Validate(); err != nil {
		_ = req.Error(string(shared.CodeValidation), err.Error(), nil)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
	defer cancel()
	data, err := s.signer.checkpoint(cctx, sc)
	switch {
	case errors.Is(err, errNoRecords):
		_ = req.Error(string(shared.CodeKeyNotFound), "the audit log "+sc.String()+" has no records", nil)
	case err != nil:
		s.log.Warn("on-demand checkpoint failed", "scope", sc.String(), "err", err)
		_ = req.Error(string(shared.CodeDependencyTimeout), "checkpoint failed: "+err.Error(), nil)
	default:
		_ = req.Respond(data)
	}
}

// watchLag refreshes the mesh-wide lags every 2 s.
func (s *Service) watchLag(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if info, err := metrics.SumConsumers(ctx, s.auditCons); err == nil {
			s.count(func(st *Stats) { st.SequencingLag = info.NumPending + uint64(info.NumAckPending) })
			metrics.AuditSequencing(s.now(), info)
			metrics.ObservePeers(shared.AuditServiceAudit, info)
		}
		snap := s.Snapshot()
		metrics.AuditCheckpoints(s.now(), snap.Checkpoints)
		metrics.AuditIntegrity(snap.Forgeries, snap.WitnessRefusals, snap.CheckpointErrors)
		if info, err := s.tlog.cons.Info(ctx); err == nil {
			lag := info.NumPending + uint64(info.NumAckPending)
			s.countExport("central", func(x *ExportStats) { x.Lag = lag })
			central := s.Snapshot().Export["central"]
			metrics.AuditExport("central", lag, central.Conflicts)
			metrics.AuditExportFailures("central", central.Failures)
		}
	}
}

// publishKey makes sure the audit key exists and is published (so the
// gateway serves it before the first checkpoint), retrying until it is.
func (s *Service) publishKey(ctx context.Context) {
	defer s.wg.Done()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		kctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
		_, _, err := s.signer.key(kctx)
		cancel()
		if err == nil {
			return
		}
		s.log.Debug("audit key not available yet", "pool", s.cfg.SignPool, "err", err)
		s.backoff(ctx, 6, err)
	}
}

// purgeEvents removes numbered events from one event stream sibling: every event
// at or below the audit consumer's ack floor is recorded in the log (acks
// are sent only after the commit). Events stay EventKeep after they were
// numbered (operators and tests read recent events), then go: one purge
// request per round, not one delete per event.
func (s *Service) purgeEvents(ctx context.Context, events jetstream.Stream, cons jetstream.Consumer) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.EventPurgeEvery)
	defer t.Stop()
	type mark struct {
		at    time.Time
		floor uint64
	}
	var marks []mark // ack floors observed, oldest first
	var done uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.now()
		if info, err := cons.Info(ctx); err == nil {
			marks = append(marks, mark{now, info.AckFloor.Stream})
		}
		var floor uint64
		for len(marks) > 0 && now.Sub(marks[0].at) >= s.cfg.EventKeep {
			floor, marks = marks[0].floor, marks[1:]
		}
		if floor <= done {
			continue
		}
		if err := events.Purge(ctx, jetstream.WithPurgeSequence(floor+1)); err != nil {
			s.log.Warn("purge numbered audit events", "err", err)
			continue
		}
		done = floor
	}
}
