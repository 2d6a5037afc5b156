package metrics

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

func scrapeText(t *testing.T) string {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return string(b)
}

// TestLabelsBounded feeds caller-chosen strings where a service might pass
// them by mistake; none reaches the page.
func TestLabelsBounded(t *testing.T) {
	evil := []string{"key-1234-caller-chosen", "pool with spaces", strings.Repeat("p", 100), "x\"}\n# TYPE evil counter"}
	for _, v := range evil {
		GatewayRequest(shared.API(v), 200, shared.Code(v), v, time.Millisecond)
		AuthnRequest(shared.API(v), shared.Code(v), time.Millisecond)
		AuditExport(v, 1, 1)
		Throttled(v)
		NATSConnected(v)
	}
	// Pools are configuration: identifier-like names are kept, up to a cap.
	for _, v := range evil[1:] {
		HSMOperation(v, shared.APIXKSEncrypt, "", time.Millisecond)
	}
	for i := range 2 * maxPools {
		HSMSessions(fmt.Sprintf("pool%03d", i), 1)
	}
	HSMOperation("pool-a", shared.APIXKSEncrypt, "", time.Millisecond)
	page := scrapeText(t)
	if strings.Contains(page, fmt.Sprintf("pool%03d", maxPools)) {
		t.Errorf("more than %d pool labels", maxPools)
	}
	for _, v := range evil[:3] {
		if strings.Contains(page, v) {
			t.Errorf("label value %q reached /metrics", v)
		}
	}
	if strings.Contains(page, "evil") {
		t.Error("an injected line reached /metrics")
	}
	for _, want := range []string{`api="other"`, `code="other"`, `pool="other"`, `api="xks.encrypt"`, `destination="other"`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
}

func TestKillSwitchCounts(t *testing.T) {
	KillSwitch("keystore.a", true)
	KillSwitch("keystore.b", true)
	KillSwitch("keystore.a", true) // replayed by a second watcher
	KillSwitch("all", true)
	KillSwitch("all", false)
	page := scrapeText(t)
	for _, want := range []string{`sovkeys_kill_switches_engaged{scope="keystore"} 2`, `sovkeys_kill_switches_engaged{scope="all"} 0`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	KillSwitch("keystore.a", false)
	KillSwitch("keystore.b", false)
}

func TestAuditSamples(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	floor := now.Add(-3 * time.Second)
	AuditSequencing(now, &jetstream.ConsumerInfo{NumPending: 5, NumAckPending: 2, AckFloor: jetstream.SequenceInfo{Last: &floor}})
	AuditCheckpoints(now, 4)
	AuditCheckpoints(now.Add(time.Minute), 4) // no new checkpoint: time stays
	page := scrapeText(t)
	for _, want := range []string{
		"sovkeys_audit_events_waiting 7", "sovkeys_audit_lag_seconds 3",
		"sovkeys_audit_checkpoint_timestamp_seconds 1.8e+09", `sovkeys_audit_checkpoints_total{service="audit"} 4`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	AuditSequencing(now, &jetstream.ConsumerInfo{AckFloor: jetstream.SequenceInfo{Last: &floor}})
	if page := scrapeText(t); !strings.Contains(page, "sovkeys_audit_lag_seconds 0") {
		t.Error("lag not 0 when nothing waits")
	}
}
