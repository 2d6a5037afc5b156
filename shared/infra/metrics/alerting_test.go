package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// TestAlertingHooks drives the hooks the alerting rules read and checks
// the samples and the bounds of their labels.
func TestAlertingHooks(t *testing.T) {
	WatchStale(shared.BucketKillSwitch, true)
	WatchStale(shared.BucketKillSwitch, true)
	WatchStale(shared.BucketKillSwitch, false)
	WatchStale("caller-bucket", true)
	WatchStale("caller-bucket", false)
	CredentialExpiry("gateway", "tls_certificate", time.Unix(1_900_000_000, 0))
	CredentialExpiry("authn", "nats_user", time.Time{}) // never expires: no series
	CredentialExpiry("caller-svc", "caller-kind", time.Unix(1, 0))
	ObservePeers("audit", &jetstream.ConsumerInfo{Cluster: &jetstream.ClusterInfo{Replicas: []*jetstream.PeerInfo{
		{Name: "n2", Current: false}, {Name: "n2", Current: false, Offline: true}, {Name: "n3", Current: true},
	}}})
	ObservePeers("keyworker", &jetstream.ConsumerInfo{}) // one node: no replicas
	AuditIntegrity(3, 2, 1)
	AuditIntegrity(1, 1, 1) // a restarted audit service: counters keep their high mark
	AuditExportFailures("central", 4)
	page := scrapeText(t)
	for _, want := range []string{
		`sovkeys_registry_watches_stale{bucket="sovkeys_killswitch"} 1`,
		`sovkeys_registry_watches_stale{bucket="other"} 0`,
		`sovkeys_credential_expiry_timestamp_seconds{kind="tls_certificate",service="gateway"} 1.9e+09`,
		`sovkeys_credential_expiry_timestamp_seconds{kind="other",service="other"} 1`,
		`sovkeys_nats_peers_not_current{service="audit"} 1`,
		`sovkeys_nats_peers_not_current{service="keyworker"} 0`,
		`sovkeys_audit_forgeries_total{service="audit"} 3`,
		`sovkeys_audit_witness_refusals_total{service="audit"} 2`,
		`sovkeys_audit_checkpoint_errors_total{service="audit"} 1`,
		`sovkeys_audit_export_failures_total{destination="central"} 4`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	for _, bad := range []string{"caller-bucket", "caller-svc", "caller-kind", `{kind="nats_user",service="authn"}`} {
		if strings.Contains(page, bad) {
			t.Errorf("page holds %s", bad)
		}
	}
}
