package metrics

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// Metrics the alerting rules (deploy/prometheus/rules) need beyond the
// dashboard's: stale watches, credential expiry, JetStream peers that
// stopped answering, and the audit service's integrity counters. (Sealed
// keyworkers and failed HSM logins: families.go, Unseal*.)

// Watched registry buckets (kill switch, key stores, keys, tenants).
var (
	watchesStale = gaugeVec("registry_watches_stale",
		"Watches of a registry bucket in this process that cannot show they mirror the bucket (ended or behind); crypto that depends on them is refused meanwhile.", "bucket")
	knownBuckets = set(shared.BucketKillSwitch, shared.BucketKeystores, shared.BucketXKSKeys, shared.BucketTenants, shared.BucketPools)
)

// WatchStale records a watch of bucket turning stale (true) or fresh
// again (false); a process may watch one bucket several times.
func WatchStale(bucket string, stale bool) {
	g := watchesStale.WithLabelValues(bounded(knownBuckets, bucket))
	if stale {
		g.Inc()
	} else {
		g.Dec()
	}
}

// WatchStarted makes bucket's stale series appear (at its current value).
func WatchStarted(bucket string) { watchesStale.WithLabelValues(bounded(knownBuckets, bucket)) }

// Credentials that expire.
var (
	credentialExpiry = gaugeVec("credential_expiry_timestamp_seconds",
		"Unix time a credential this process loaded expires (kind: nats_user for the .creds user JWT, tls_certificate for the gateway's serving certificate); absent when it never expires.", "service", "kind")
	knownCredentials = set("nats_user", "tls_certificate")
)

// CredentialExpiry records when a credential of service expires; a zero
// time (never) records nothing.
func CredentialExpiry(service, kind string, at time.Time) {
	if at.IsZero() {
		return
	}
	credentialExpiry.WithLabelValues(bounded(set(knownServices...), service), bounded(knownCredentials, kind)).Set(float64(at.Unix()))
}

// JetStream peers.
var (
	natsPeersNotCurrent = gaugeVec("nats_peers_not_current",
		"JetStream servers that a replica of this service's consumers reports offline or not current (distinct servers; 0 when all replicas are current or the deployment has one node).", "service")
)

// ObservePeers records, for service, how many distinct servers the
// replica list of info (SumConsumers gathers every sibling's) reports
// offline or not current.
func ObservePeers(service string, info *jetstream.ConsumerInfo) {
	down := map[string]bool{}
	if info != nil && info.Cluster != nil {
		for _, p := range info.Cluster.Replicas {
			if p != nil && (p.Offline || !p.Current) {
				down[p.Name] = true
			}
		}
	}
	natsPeersNotCurrent.WithLabelValues(bounded(set(knownServices...), service)).Set(float64(len(down)))
}

// Audit integrity.
var (
	auditForgeries = totalsVec("audit_forgeries_total",
		"Events the audit service recorded as forgery attempts (body not matching its publisher, or an event kind not allowed on its subject).", "service")
	auditWitnessRefusals = totalsVec("audit_witness_refusals_total",
		"Checkpoints a witness did not cosign (refused, conflicting or unreachable).", "service")
	auditCheckpointErrors = totalsVec("audit_checkpoint_errors_total",
		"Checkpoints the audit service failed to sign or write.", "service")
	exportFailures = totalsVec("audit_export_failures_total",
		"Exports that failed (and will be retried), per destination.", "destination")
)

// AuditIntegrity records the audit service's running counts of forgery
// records, witness refusals and checkpoint errors.
func AuditIntegrity(forgeries, witnessRefusals, checkpointErrors uint64) {
	auditForgeries.set("audit", float64(forgeries))
	auditWitnessRefusals.set("audit", float64(witnessRefusals))
	auditCheckpointErrors.set("audit", float64(checkpointErrors))
}

// AuditExportFailures records an exporter's running count of failures.
func AuditExportFailures(destination string, failures uint64) {
	exportFailures.set(bounded(knownDestinations, destination), float64(failures))
}
