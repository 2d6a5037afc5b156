package metrics

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// Gateway: every HTTP request, by API, status class, error code and XKS
// errorName (empty for success and for the volume-secret API).
var (
	gatewayRequests = counterVec("gateway_requests_total",
		"HTTP requests answered by the gateway.", "api", "status_class", "code", "error_name")
	gatewayDuration = histogramVec("gateway_request_duration_seconds",
		"Time from request received to answer written, by API.", latencyBuckets, "api")
	throttled = counterVec("throttled_total",
		"Requests refused for load (429/ThrottlingException): gateway counts every 429 it answers, authn and keyworker those they decided.", "service")
)

// requestResends counts requests the gateway sent again on another
// request sibling because their answer was overdue (shared/infra/mesh/resend.go).
var requestResends = counterVec("gateway_request_resends_total",
	"Requests the gateway sent again on another request-stream sibling because their answer was overdue (a stalled consumer, e.g. a NATS node lost).", "api")

// RequestResent counts one resend of a request for api.
func RequestResent(a shared.API) { requestResends.WithLabelValues(api(a)).Inc() }

// GatewayRequest records one answered HTTP request.
func GatewayRequest(a shared.API, status int, c shared.Code, errorName string, d time.Duration) {
	if !strings.HasSuffix(errorName, "Exception") || len(errorName) > 48 {
		errorName = ""
	}
	gatewayRequests.WithLabelValues(api(a), statusClass(status), code(c), errorName).Inc()
	gatewayDuration.WithLabelValues(api(a)).Observe(seconds(d))
}

// Throttled counts one request refused for load by service ("gateway",
// "authn", "keyworker").
func Throttled(service string) {
	throttled.WithLabelValues(bounded(knownServiceSet, service)).Inc()
}

// Authn: every request authn decided, by API and result code.
var (
	authnRequests = counterVec("authn_requests_total",
		"Requests authn handled, by API and code (ok when forwarded or answered).", "api", "code")
	authnDuration = histogramVec("authn_duration_seconds",
		"Time authn spent on a request (authentication, authorization, forwarding).", latencyBuckets, "api")
)

// AuthnRequest records one request authn handled; c is "" when it was
// forwarded or answered without error.
func AuthnRequest(a shared.API, c shared.Code, d time.Duration) {
	authnRequests.WithLabelValues(api(a), code(c)).Inc()
	authnDuration.WithLabelValues(api(a)).Observe(seconds(d))
	if c == shared.CodeThrottling {
		Throttled("authn")
	}
}

// Keyworker: HSM work per pool.
var (
	hsmOps = counterVec("hsm_operations_total",
		"Work items a keyworker executed against its HSM, by pool, API and code.", "pool", "api", "code")
	hsmDuration = histogramVec("hsm_operation_duration_seconds",
		"Time a keyworker spent on one work item (HSM calls included), by pool and API.", hsmBuckets, "pool", "api")
	hsmQueueDepth = gaugeVec("hsm_queue_depth",
		"Work items waiting in a pool's queue (not yet delivered to a keyworker).", "pool")
	hsmInFlight = gaugeVec("hsm_inflight",
		"Work items delivered to the pool's keyworkers and not yet acknowledged (mesh-wide).", "pool")
	hsmBudget = gaugeVec("hsm_inflight_budget",
		"The pool's concurrency budget (MaxAckPending of its consumer).", "pool")
	hsmSessions = gaugeVec("hsm_sessions",
		"HSM sessions this keyworker process holds for the pool.", "pool")
)

// HSMOperation records one work item of pool; c is "" on success.
func HSMOperation(pool string, a shared.API, c shared.Code, d time.Duration) {
	hsmOps.WithLabelValues(poolLabel(pool), api(a), code(c)).Inc()
	hsmDuration.WithLabelValues(poolLabel(pool), api(a)).Observe(seconds(d))
	if c == shared.CodeThrottling {
		Throttled("keyworker")
	}
}

// HSMSessions records how many HSM sessions a keyworker holds for pool.
func HSMSessions(pool string, n int) { hsmSessions.WithLabelValues(poolLabel(pool)).Set(float64(n)) }

// ConsumerInfo is the part of a JetStream consumer the watchers read.
type ConsumerInfo interface {
	Info(ctx context.Context) (*jetstream.ConsumerInfo, error)
}

var _ ConsumerInfo = (jetstream.Consumer)(nil)

// WatchWorkQueue samples pool's work consumer every interval until ctx
// ends: queue depth, mesh-wide in-flight and the budget. Run it in its own
// goroutine.
func WatchWorkQueue[C ConsumerInfo](ctx context.Context, pool string, cons []C, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		// The pool's consumers on every sibling work stream, summed.
		if sum, err := SumConsumers(ctx, cons); err == nil && len(cons) > 0 {
			ObserveWorkQueue(pool, sum)
			ObservePeers("keyworker", sum)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SumConsumers adds up the consumers of one durable on its sibling
// streams: pending and in-flight messages, the in-flight budget, and the
// oldest ack-floor time among those with work waiting.
func SumConsumers[C ConsumerInfo](ctx context.Context, cons []C) (*jetstream.ConsumerInfo, error) {
	var sum jetstream.ConsumerInfo
	for _, c := range cons {
		info, err := c.Info(ctx)
		if err != nil {
			return nil, err
		}
		sum.NumPending += info.NumPending
		sum.NumAckPending += info.NumAckPending
		sum.Config.MaxAckPending += info.Config.MaxAckPending
		if info.Cluster != nil { // every sibling's replicas, for ObservePeers
			if sum.Cluster == nil {
				sum.Cluster = &jetstream.ClusterInfo{}
			}
			sum.Cluster.Replicas = append(sum.Cluster.Replicas, info.Cluster.Replicas...)
		}
		waiting := info.NumPending+uint64(info.NumAckPending) > 0
		if last := info.AckFloor.Last; waiting && last != nil && (sum.AckFloor.Last == nil || last.Before(*sum.AckFloor.Last)) {
			sum.AckFloor.Last = last
		}
	}
	return &sum, nil
}

// ObserveWorkQueue records one sample of pool's work consumer.
func ObserveWorkQueue(pool string, info *jetstream.ConsumerInfo) {
	p := poolLabel(pool)
	hsmQueueDepth.WithLabelValues(p).Set(float64(info.NumPending))
	hsmInFlight.WithLabelValues(p).Set(float64(info.NumAckPending))
	hsmBudget.WithLabelValues(p).Set(float64(info.Config.MaxAckPending))
}

// Kill switches: how many are engaged, per scope kind.
var (
	killSwitches = gaugeVec("kill_switches_engaged",
		"Kill switches engaged, by scope kind (all, keystore, tenant).", "scope")
	killMu      sync.Mutex
	killEngaged = map[string]bool{}
)

// KillSwitch records the state of the kill switch stored under key (a
// killswitch KV key: "all", "keystore.<token>", "tenant.<token>"). Only
// the scope kind becomes a label.
func KillSwitch(key string, engaged bool) {
	killMu.Lock()
	defer killMu.Unlock()
	if engaged {
		killEngaged[key] = true
	} else {
		delete(killEngaged, key)
	}
	counts := map[string]int{"all": 0, "keystore": 0, "tenant": 0}
	for k := range killEngaged {
		kind, _, _ := strings.Cut(k, ".")
		if _, ok := counts[kind]; ok {
			counts[kind]++
		}
	}
	for kind, n := range counts {
		killSwitches.WithLabelValues(kind).Set(float64(n))
	}
}

// Audit: sequencing backlog, checkpoints, export.
var (
	auditWaiting = gauge("audit_events_waiting",
		"Audit events published and not yet numbered into the log (mesh-wide).")
	auditBehind = gauge("audit_lag_seconds",
		"How long the oldest waiting audit event has waited: seconds since the audit consumer's ack floor last moved, 0 when none waits.")
	auditCheckpoint = gauge("audit_checkpoint_timestamp_seconds",
		"Unix time this process last saw the audit service sign a checkpoint, 0 until then (age: time() - this).")
	auditCheckpoints = totalsVec("audit_checkpoints_total",
		"Checkpoints the audit service signed.", "service")
	exportLag = gaugeVec("audit_export_lag",
		"Audit log messages not yet exported, per destination.", "destination")
	exportConflicts = totalsVec("audit_export_conflicts_total",
		"Exports that found a different object already written (write-once conflict), per destination.", "destination")
	checkpointMu    sync.Mutex
	lastCheckpoints uint64
)

// AuditSequencing records a sample of the audit consumer at now.
func AuditSequencing(now time.Time, info *jetstream.ConsumerInfo) {
	waiting := info.NumPending + uint64(info.NumAckPending)
	auditWaiting.Set(float64(waiting))
	behind := 0.0
	if waiting > 0 && info.AckFloor.Last != nil {
		behind = max(0, now.Sub(*info.AckFloor.Last).Seconds())
	}
	auditBehind.Set(behind)
}

// AuditCheckpoints records the audit service's running count of signed
// checkpoints; when it grew since the last call, the checkpoint time is
// now (resolution: the caller's sampling interval).
func AuditCheckpoints(now time.Time, total uint64) {
	checkpointMu.Lock()
	if total > lastCheckpoints {
		auditCheckpoint.Set(float64(now.UnixNano()) / 1e9)
	}
	lastCheckpoints = total
	checkpointMu.Unlock()
	auditCheckpoints.set("audit", float64(total))
}

// AuditExport records an exporter's lag (log messages) and its running
// count of write-once conflicts.
func AuditExport(destination string, lag, conflicts uint64) {
	exportLag.WithLabelValues(bounded(knownDestinations, destination)).Set(float64(lag))
	exportConflicts.set(bounded(knownDestinations, destination), float64(conflicts))
}

// NATS connections.
var (
	natsReconnects = counterVec("nats_reconnects_total",
		"Times a service's NATS connection was re-established.", "service")
	natsDisconnects = counterVec("nats_disconnects_total",
		"Times a service's NATS connection was lost.", "service")
)

// connName turns a connection name ("sovkeys-gateway") into a service label.
func connName(conn string) string {
	return bounded(set(knownServices...), strings.TrimPrefix(conn, "sovkeys-"))
}

// NATSConnected makes the NATS series of conn appear (at zero).
func NATSConnected(conn string) {
	natsReconnects.WithLabelValues(connName(conn))
	natsDisconnects.WithLabelValues(connName(conn))
}

// NATSReconnected counts a reconnect of conn.
func NATSReconnected(conn string) { natsReconnects.WithLabelValues(connName(conn)).Inc() }

// NATSDisconnected counts a lost connection of conn.
func NATSDisconnected(conn string) { natsDisconnects.WithLabelValues(connName(conn)).Inc() }

// Audit publishing: events and the messages that carried them (a batch
// message carries several, mesh.AuditBatcher), per publishing service.
var (
	auditPublishEvents = counterVec("audit_publish_events_total",
		"Audit events this process published through its batcher and saw acked, by publishing service (events / messages = events per batch).", "service")
	auditPublishMessages = counterVec("audit_publish_messages_total",
		"Audit messages (single events or batches) this process published through its batcher and saw acked, by publishing service.", "service")
)

// AuditPublished records one acked audit message of service carrying events.
func AuditPublished(service string, events int) {
	s := bounded(set(knownServices...), service)
	auditPublishEvents.WithLabelValues(s).Add(float64(events))
	auditPublishMessages.WithLabelValues(s).Inc()
}

// Keyworker unseal: a sealed process, failed HSM logins, a locked pool.
var (
	unsealSealed = gaugeVec("keyworker_sealed",
		"1 while this keyworker process waits, sealed, for its pool's HSM PIN shares; 0 once unsealed.", "pool")
	unsealLocked = gaugeVec("keyworker_unseal_locked",
		"1 while the pool's failed HSM login budget is spent (no login is tried: the pool stays sealed), as this sealed keyworker last saw it.", "pool")
	unsealFailedLogins = counterVec("keyworker_unseal_failed_logins_total",
		"HSM logins with a PIN combined from unseal shares that failed, counted by the keyworker that tried.", "pool")
	unsealRefusedShares = counterVec("keyworker_unseal_refused_shares_total",
		"Unseal shares refused before any HSM login, by reason (malformed, not_for_this_keyworker, other_pool, threshold, check, clear).", "pool", "reason")
)

// UnsealInit makes pool's unseal series exist (at zero) in a keyworker that
// is not, or no longer, sealed, so dashboards and alerts see them.
func UnsealInit(pool string) {
	p := poolLabel(pool)
	unsealSealed.WithLabelValues(p).Set(0)
	unsealLocked.WithLabelValues(p).Set(0)
	unsealFailedLogins.WithLabelValues(p).Add(0)
	unsealRefusedShares.WithLabelValues(p, "check").Add(0)
}

// UnsealSealed records whether this keyworker process of pool is sealed.
func UnsealSealed(pool string, sealed bool) {
	unsealSealed.WithLabelValues(poolLabel(pool)).Set(b2f(sealed))
}

// UnsealLocked records whether pool's failed-login budget is spent.
func UnsealLocked(pool string, locked bool) {
	unsealLocked.WithLabelValues(poolLabel(pool)).Set(b2f(locked))
}

// UnsealFailedLogin counts one failed HSM login of pool.
func UnsealFailedLogin(pool string) { unsealFailedLogins.WithLabelValues(poolLabel(pool)).Inc() }

// UnsealRefusedShare counts one share refused before login, by reason.
func UnsealRefusedShare(pool, reason string) {
	unsealRefusedShares.WithLabelValues(poolLabel(pool),
		bounded(set("malformed", "not_for_this_keyworker", "other_pool", "threshold", "check", "clear"), reason)).Inc()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
