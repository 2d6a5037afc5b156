// Package mesh connects a sovkeys service to NATS and declares the JetStream
// streams, consumers and KV buckets it relies on. Every declaration takes the
// replica count from Topology so the same code runs on an embedded
// single-node server and on a 3-node cluster.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// ConnConfig says how a service reaches NATS.
type ConnConfig struct {
	URL       string // nats://host:4222[,nats://...]
	CredsFile string // NATS .creds file (user JWT + seed)
	Name      string // connection name shown by the server
	CAFile    string // optional: trust anchor for NATS TLS
	// InProcess, when set, connects through the embedded server's
	// in-process pipe instead of TCP (`sovkeys standalone`: no loopback
	// socket, no syscalls per message). The connection still presents its
	// credentials and gets only its user's permissions.
	InProcess nats.InProcessConnProvider
}

// Validate checks the connection settings.
func (c ConnConfig) Validate() error {
	if c.URL == "" {
		return fmt.Errorf("%w: nats url is required", shared.ErrConfigValidation)
	}
	return nil
}

// Connect dials NATS with reconnects forever and returns the connection and
// its JetStream handle.
func Connect(ctx context.Context, cfg ConnConfig, logger *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				metrics.NATSDisconnected(cfg.Name)
				logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			metrics.NATSReconnected(cfg.Name)
			logger.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			logger.Warn("nats async error", "subject", subj, "err", err)
		}),
	}
	if cfg.CredsFile != "" {
		user, err := CredsUser(cfg.CredsFile)
		if err != nil {
			return nil, nil, err
		}
		if exp, err := CredsExpiry(cfg.CredsFile); err == nil { // alert CredentialExpiresSoon
			metrics.CredentialExpiry(strings.TrimPrefix(cfg.Name, "sovkeys-"), "nats_user", exp)
		}
		// A private inbox space: the user's permissions allow subscribing
		// only there, so no one reads another's replies.
		opts = append(opts, nats.UserCredentials(cfg.CredsFile), nats.CustomInboxPrefix(shared.InboxPrefix(user)))
	}
	if cfg.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.CAFile))
	}
	if cfg.InProcess != nil {
		opts = append(opts, nats.InProcessServer(cfg.InProcess))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("mesh: connect %s: %w", cfg.URL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("mesh: jetstream: %w", err)
	}
	metrics.NATSConnected(cfg.Name)
	if cfg.CredsFile != "" {
		go WatchCreds(nc, cfg.CredsFile, CredsWatchInterval, logger) // identity.go: rotation without a restart
	}
	return nc, js, nil
}

// Topology sizes the streams and buckets.
type Topology struct {
	Replicas int // 1 for a single server, 3 in production
	// RequestQueueDepth bounds the authn request stream; a full stream
	// answers ThrottlingException at once.
	RequestQueueDepth int
	// WorkQueueDepth bounds each keyworker pool's stream.
	WorkQueueDepth int
	// WorkBudget is the MaxAckPending of a pool's consumer: the HSM's
	// concurrency budget shared by every keyworker of the pool.
	WorkBudget int
	// AuditMaxAge bounds how long audit events stay in the stream.
	AuditMaxAge time.Duration
	// FileStorageWork stores request and work queues on disk; by default they
	// live in memory (requests are short-lived; a lost one is retried by the caller).
	FileStorageWork bool
	// Siblings is how many sibling streams (leaders on different nodes,
	// siblings.go) the request, work and audit streams have: Bootstrap
	// declares them; a service binds at least this many and every further
	// one that exists. 0 or 1: one stream each.
	Siblings int
}

// DefaultTopology is right for one node and a SoftHSM token. Queue depths
// are sized so a full work queue clears in about KMS's 250 ms budget at the
// ~2,000 req/s one such node serves (measured, docs/BENCHMARKS.md): beyond
// them callers get an immediate ThrottlingException instead of a late
// timeout, while short stalls are absorbed.
func DefaultTopology() Topology {
	return Topology{Replicas: 1, RequestQueueDepth: 1024, WorkQueueDepth: 512, WorkBudget: 64, AuditMaxAge: 7 * 24 * time.Hour}
}

// Validate checks the topology.
func (t Topology) Validate() error {
	switch {
	case t.Replicas < 1 || t.Replicas > 5:
		return fmt.Errorf("%w: replicas must be 1..5, got %d", shared.ErrConfigValidation, t.Replicas)
	case t.RequestQueueDepth < 1 || t.WorkQueueDepth < 1:
		return fmt.Errorf("%w: queue depths must be positive", shared.ErrConfigValidation)
	case t.WorkBudget < 1:
		return fmt.Errorf("%w: work budget must be positive", shared.ErrConfigValidation)
	case t.Siblings < 0 || t.Siblings > shared.MaxSiblings:
		return fmt.Errorf("%w: stream siblings must be 1..%d, got %d", shared.ErrConfigValidation, shared.MaxSiblings, t.Siblings)
	case t.AuditMaxAge < time.Minute:
		return fmt.Errorf("%w: audit max age must be at least a minute", shared.ErrConfigValidation)
	}
	return nil
}

func (t Topology) workStorage() jetstream.StorageType {
	if t.FileStorageWork {
		return jetstream.FileStorage
	}
	return jetstream.MemoryStorage
}

// RequestStreamConfig is sibling i of the stream gateways publish to and
// authn consumes.
func RequestStreamConfig(t Topology, i int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        shared.SiblingStream(shared.StreamRequests, i),
		Description: "sovkeys: requests from gateways to authn",
		Subjects:    []string{shared.SiblingPrefix(shared.SubjectRequestPrefix, i) + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     int64(t.RequestQueueDepth),
		MaxAge:      time.Minute,
		Storage:     t.workStorage(),
		Replicas:    t.Replicas,
		Duplicates:  30 * time.Second,
	}
}

// WorkStreamConfig is sibling i of a keyworker pool's work queue.
func WorkStreamConfig(pool string, t Topology, i int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        shared.SiblingStream(shared.WorkStream(pool), i),
		Description: "sovkeys: HSM work for pool " + pool,
		Subjects:    []string{shared.SiblingPrefix(shared.SubjectWorkPrefix, i) + pool + ".>"},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     int64(t.WorkQueueDepth),
		MaxAge:      time.Minute,
		Storage:     t.workStorage(),
		Replicas:    t.Replicas,
		Duplicates:  30 * time.Second,
	}
}

// AuditStreamConfig is sibling i of the durable audit event stream.
func AuditStreamConfig(t Topology, i int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        shared.SiblingStream(shared.StreamAudit, i),
		Description: "sovkeys: audit events",
		Subjects:    []string{shared.SiblingPrefix(shared.SubjectAuditPrefix, i) + ">"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      t.AuditMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		Duplicates:  AuditDuplicateWindow,
	}
}

// AuditDuplicateWindow is the audit event streams' de-duplication window
// (2026-12-07; 2 minutes before). Every retry of one audit publish, of a
// batch (auditBatchWait) or of a lone event (noDeadlineRounds, about 12 s)
// ends well within it, and each id it remembers is live heap of the
// server: at 1,000 answers/s the 2-minute window held the largest part of
// a node's heap, whose garbage collection made its latency tail
// (docs/BENCHMARKS.md). `sovkeys init` (and a standalone node's start)
// updates existing streams to it; messages are kept.
const AuditDuplicateWindow = 30 * time.Second

// EnsureRequestStreams binds (or, with create rights, declares) the
// request stream and its siblings.
func EnsureRequestStreams(ctx context.Context, js jetstream.JetStream, t Topology) ([]jetstream.Stream, error) {
	return SiblingsOf(ctx, js, t.Siblings, shared.StreamRequests, func(ctx context.Context, i int) (jetstream.Stream, error) {
		return ensureStream(ctx, js, RequestStreamConfig(t, i))
	})
}

// EnsureWorkStreams binds (or, with create rights, declares) a pool's work
// queue and its siblings.
func EnsureWorkStreams(ctx context.Context, js jetstream.JetStream, pool string, t Topology) ([]jetstream.Stream, error) {
	if !shared.ValidPoolName(pool) {
		return nil, fmt.Errorf("%w: pool name %q", shared.ErrConfigValidation, pool)
	}
	return SiblingsOf(ctx, js, t.Siblings, shared.WorkStream(pool), func(ctx context.Context, i int) (jetstream.Stream, error) {
		return ensureStream(ctx, js, WorkStreamConfig(pool, t, i))
	})
}

// EnsureAuditStreams binds (or, with create rights, declares) the audit
// event stream and its siblings.
func EnsureAuditStreams(ctx context.Context, js jetstream.JetStream, t Topology) ([]jetstream.Stream, error) {
	return SiblingsOf(ctx, js, t.Siblings, shared.StreamAudit, func(ctx context.Context, i int) (jetstream.Stream, error) {
		return ensureStream(ctx, js, AuditStreamConfig(t, i))
	})
}

// declareRetries bounds retries of a declaration that raced another
// process's: the server reports such races with several codes (name in use,
// store creation failed while the other create finishes, cluster proposals).
const declareRetries = 10

// Services bind; Bootstrap declares. A service that finds a stream or
// bucket missing tries to create it (a test server, a user with create
// rights) and otherwise waits, looking it up again, until the bootstrap
// identity has declared it: bindAttempts tries, each create bounded by
// createTimeout (a denied request is never answered).
const (
	bindAttempts  = 120
	createTimeout = 2 * time.Second
	maxBindWait   = time.Second
)

// ensureStream binds the stream, creating it (never updating it) if it is
// missing and the user may.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return bindOrCreate(ctx, "stream", cfg.Name,
		func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, cfg.Name) },
		func(ctx context.Context) (jetstream.Stream, error) { return js.CreateStream(ctx, cfg) })
}

// bindOrCreate looks a declaration up, creating it if it is missing and the
// user may, and otherwise waits (bounded) for Bootstrap to declare it.
func bindOrCreate[T any](ctx context.Context, kind, name string, lookup, create func(context.Context) (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for attempt := range bindAttempts {
		if v, err = lookup(ctx); err == nil {
			return v, nil
		}
		cctx, cancel := context.WithTimeout(ctx, createTimeout)
		v, err = create(cctx)
		cancel()
		if err == nil {
			return v, nil
		}
		if werr := waitCapped(ctx, attempt); werr != nil {
			break
		}
	}
	var zero T
	return zero, fmt.Errorf("mesh: %s %s (not declared; run sovkeys init): %w", kind, name, err)
}

func waitCapped(ctx context.Context, attempt int) error {
	return sleep(ctx, min(time.Duration(attempt+1)*50*time.Millisecond, maxBindWait))
}

// declareStream creates or updates the stream to cfg.
func declareStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	var err error
	for attempt := range declareRetries {
		var s jetstream.Stream
		if s, err = js.CreateOrUpdateStream(ctx, cfg); err == nil {
			return s, nil
		}
		if ctx.Err() != nil {
			break
		}
		if s, lerr := js.Stream(ctx, cfg.Name); lerr == nil && attempt > 0 {
			return s, nil // declared by the other party; its config wins this round
		}
		if werr := wait(ctx, attempt); werr != nil {
			break
		}
	}
	return nil, fmt.Errorf("mesh: stream %s: %w", cfg.Name, err)
}

func wait(ctx context.Context, attempt int) error {
	return sleep(ctx, time.Duration(attempt+1)*50*time.Millisecond)
}

// EnsureBucket binds a KV bucket, declaring it when it does not exist yet
// (idempotent, safe under races; only identities with create rights can).
func EnsureBucket(ctx context.Context, js jetstream.JetStream, name, description string, t Topology) (jetstream.KeyValue, error) {
	return BindKV(ctx, js, bucketConfig(name, description, t))
}

// BindKV binds KV bucket cfg.Bucket, creating it with cfg if it is missing
// and the user may, else waiting for Bootstrap to declare it.
func BindKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return bindOrCreate(ctx, "kv", cfg.Bucket,
		func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, cfg.Bucket) },
		func(ctx context.Context) (jetstream.KeyValue, error) { return js.CreateKeyValue(ctx, cfg) })
}

// BindObjectStore binds object store cfg.Bucket like BindKV.
func BindObjectStore(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	return bindOrCreate(ctx, "object store", cfg.Bucket,
		func(ctx context.Context) (jetstream.ObjectStore, error) { return js.ObjectStore(ctx, cfg.Bucket) },
		func(ctx context.Context) (jetstream.ObjectStore, error) { return js.CreateObjectStore(ctx, cfg) })
}

func bucketConfig(name, description string, t Topology) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: name, Description: description, History: 5,
		Storage: jetstream.FileStorage, Replicas: t.Replicas,
	}
}

// IsQueueFull reports whether a JetStream publish failed because a bounded
// stream is full (DiscardNew). Matched by API error code, which both
// single-node and clustered servers use for this case.
func IsQueueFull(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	// JSStreamStoreFailedF (10077) wraps the store's "maximum messages
	// exceeded" / "maximum bytes exceeded".
	return apiErr.ErrorCode == jetstream.ErrorCode(shared.JSErrCodeStoreFailed) && strings.Contains(apiErr.Description, "maximum")
}

// IsWrongLastSequence reports whether a publish or KV update failed its
// expected-last-(subject-)sequence check: 10071 "wrong last sequence: N"
// (single server, and a cluster leader once the subject's last message is
// applied), or 10164 "wrong last sequence" (a cluster leader with a write to
// the subject still in flight).
func IsWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}
