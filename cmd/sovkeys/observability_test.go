package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sovkeys/sovkeys/shared/infra/metrics"
	"github.com/sovkeys/sovkeys/shared/testkit/jaegertest"
)

// startObservedNode starts a standalone node of its own with extra
// environment (set with t.Setenv: the node reads the process environment
// for what the test does not override) and stops it at cleanup.
func startObservedNode(t *testing.T, env map[string]string) *node {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	// t.TempDir, not a /tmp/sovkeys-* directory: on a shared machine
	// something else removed such directories under a running node.
	dir := t.TempDir()
	n, err := startNode(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c := n.shutdown(); c != 0 {
			t.Errorf("standalone exited %d: %s", c, n.stderr.String())
		}
	})
	return n
}

// TestMetricsScrape runs a node with --metrics-listen (through its env
// default), makes XKS calls and scrapes /metrics as Prometheus would: every
// family sovkeys defines is there, the values follow the calls, and no
// label carries a key id, a request id or a credential.
func TestMetricsScrape(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	n := startObservedNode(t, map[string]string{"SOVKEYS_METRICS_LISTEN": addr})
	ctx := context.Background()
	const keyID = "obs-metrics-distinctive-key-id"
	c, creds := n.newKeystore(t, "/observed")
	n.cli(t, nil, "xks", "key", "create", "--keystore", "/observed", "--id", keyID)
	waitUsable(t, c)
	enc, err := c.Encrypt(ctx, keyID, []byte("metrics plaintext"), nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Decrypt(ctx, keyID, enc, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Encrypt(ctx, "obs-no-such-key-id", []byte("x"), nil, false); xksErrName(err) != "KeyNotFoundException" {
		t.Fatalf("encrypt with unknown key: %v", err)
	}

	var fams map[string]*dto.MetricFamily
	var raw []byte
	testkit.CheckFor(t, 20*time.Second, 200*time.Millisecond, func() error {
		raw, fams, err = scrape("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		var missing []string
		for _, f := range metrics.Families() {
			if fams[f.Name] == nil {
				missing = append(missing, f.Name)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("families missing from /metrics: %v", missing)
		}
		return nil
	})

	for _, tc := range []struct {
		family string
		labels map[string]string
		min    float64
	}{
		{"sovkeys_gateway_requests_total", map[string]string{"api": "xks.encrypt", "status_class": "2xx", "code": "ok"}, 1},
		{"sovkeys_gateway_requests_total", map[string]string{"api": "xks.decrypt", "status_class": "2xx", "code": "ok"}, 1},
		{"sovkeys_gateway_requests_total", map[string]string{"api": "xks.encrypt", "status_class": "4xx", "code": "key_not_found", "error_name": "KeyNotFoundException"}, 1},
		{"sovkeys_gateway_request_duration_seconds", map[string]string{"api": "xks.encrypt"}, 2},
		{"sovkeys_authn_requests_total", map[string]string{"api": "xks.encrypt", "code": "ok"}, 1},
		{"sovkeys_authn_requests_total", map[string]string{"api": "xks.encrypt", "code": "key_not_found"}, 1},
		{"sovkeys_hsm_operations_total", map[string]string{"pool": "default", "api": "xks.encrypt", "code": "ok"}, 1},
		{"sovkeys_hsm_operation_duration_seconds", map[string]string{"pool": "default", "api": "xks.decrypt"}, 1},
		{"sovkeys_hsm_inflight_budget", map[string]string{"pool": "default"}, 64},
		{"sovkeys_audit_publish_events_total", map[string]string{"service": "keyworker"}, 2},
		{"sovkeys_audit_publish_messages_total", map[string]string{"service": "keyworker"}, 1},
		{"sovkeys_kill_switches_engaged", map[string]string{"scope": "all"}, 0},
		{"sovkeys_nats_reconnects_total", map[string]string{"service": "gateway"}, 0},
	} {
		if v, ok := sample(fams[tc.family], tc.labels); !ok || v < tc.min {
			t.Errorf("%s%v = %v (found %v), want >= %v", tc.family, tc.labels, v, ok, tc.min)
		}
	}
	// Labels are bounded: nothing a caller chose appears on the page.
	for _, secret := range []string{keyID, "obs-no-such-key-id", creds.AccessKeyID, creds.SecretAccessKey, "metrics plaintext"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("/metrics carries %q", secret)
		}
	}
}

func scrape(url string) ([]byte, map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url) //nolint:noctx // loopback test scrape
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return raw, nil, fmt.Errorf("scrape: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	return raw, fams, err
}

// sample returns the value of the series of f whose labels include want
// (summed over the other labels); a histogram's value is its count.
func sample(f *dto.MetricFamily, want map[string]string) (float64, bool) {
	if f == nil {
		return 0, false
	}
	var sum float64
	found := false
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum, found
}

// TestTracesReachJaeger runs a node exporting over OTLP to a real Jaeger
// and finds one XKS call in it as ONE trace: gateway -> authn ->
// keyworker -> audit, parent to child, with the request ids as attributes
// and no plaintext or credential anywhere in the stored spans.
func TestTracesReachJaeger(t *testing.T) {
	j := jaegertest.Run(t)
	n := startObservedNode(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + j.OTLPGRPC,
		"OTEL_EXPORTER_OTLP_INSECURE": "true",
		"OTEL_BSP_SCHEDULE_DELAY":     "100", // ms: export spans promptly
	})
	ctx := context.Background()
	const keyID = "obs-trace-key"
	plaintext := []byte("trace-test plaintext: must never be in a span")
	aad := []byte("trace-test aad value")
	c, creds := n.newKeystore(t, "/traced")
	n.cli(t, nil, "xks", "key", "create", "--keystore", "/traced", "--id", keyID)
	waitUsable(t, c)
	enc, err := c.Encrypt(ctx, keyID, plaintext, aad, false)
	if err != nil {
		t.Fatal(err)
	}

	want := []string{"sovkeys-gateway", "sovkeys-authn", "sovkeys-keyworker", "sovkeys-audit"}
	var tr jaegertest.Trace
	var raw []byte
	testkit.CheckFor(t, 30*time.Second, 250*time.Millisecond, func() error {
		var traces []jaegertest.Trace
		traces, raw, err = j.Traces(ctx, "sovkeys-gateway", "gateway xks.encrypt")
		if err != nil {
			return err
		}
		if len(traces) != 1 {
			return fmt.Errorf("want 1 encrypt trace, got %d", len(traces))
		}
		tr = traces[0]
		have := map[string]bool{}
		for _, sp := range tr.Spans {
			have[tr.Service(sp)] = true
		}
		for _, s := range want {
			if !have[s] {
				return fmt.Errorf("trace %s has no span of %s yet (has %v)", tr.TraceID, s, have)
			}
		}
		return nil
	})

	byID := map[string]jaegertest.Span{}
	for _, sp := range tr.Spans {
		if sp.TraceID != tr.TraceID {
			t.Errorf("span %s in trace %s has trace id %s", sp.SpanID, tr.TraceID, sp.TraceID)
		}
		byID[sp.SpanID] = sp
	}
	find := func(service, op string) jaegertest.Span {
		t.Helper()
		for _, sp := range tr.Spans {
			if tr.Service(sp) == service && strings.HasPrefix(sp.OperationName, op) {
				return sp
			}
		}
		t.Fatalf("no %q span of %s in trace %s", op, service, tr.TraceID)
		return jaegertest.Span{}
	}
	gw := find("sovkeys-gateway", "gateway xks.encrypt")
	an := find("sovkeys-authn", "authn xks.encrypt")
	kw := find("sovkeys-keyworker", "keyworker xks.encrypt")
	au := find("sovkeys-audit", "audit receive")
	// The chain, parent to child (the JetStream hops carry traceparent).
	for _, link := range []struct {
		child, parent jaegertest.Span
	}{{an, gw}, {kw, an}, {au, kw}} {
		if got := link.child.Parent(); got != link.parent.SpanID {
			t.Errorf("%s: parent %s (%s), want %s (%s)", link.child.OperationName, got, byID[got].OperationName,
				link.parent.SpanID, link.parent.OperationName)
		}
	}
	rid := gw.Tag("sovkeys.request_id")
	if len(rid) != 32 {
		t.Fatalf("gateway span request id %q", rid)
	}
	for _, sp := range []jaegertest.Span{an, kw} {
		if got := sp.Tag("sovkeys.request_id"); got != rid {
			t.Errorf("%s: request id %q, want %q", sp.OperationName, got, rid)
		}
	}
	if got := an.Tag("sovkeys.kms_request_id"); got != "4112f4d6-db54-4af4-ae30-c55a22a8dfae" { // xksclient's
		t.Errorf("authn span kms request id %q", got)
	}
	// Nothing secret reaches the trace store.
	for what, s := range map[string]string{
		"plaintext": string(plaintext), "plaintext (base64)": base64.StdEncoding.EncodeToString(plaintext),
		"aad": string(aad), "aad (base64)": base64.StdEncoding.EncodeToString(aad),
		"ciphertext (base64)": base64.StdEncoding.EncodeToString(enc.Ciphertext),
		"secret access key":   creds.SecretAccessKey, "sigv4 signature": "Signature=",
		"authorization header": "AWS4-HMAC-SHA256",
	} {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("trace JSON carries the %s", what)
		}
	}
	for _, share := range n.shares {
		if bytes.Contains(raw, []byte(share)) {
			t.Error("trace JSON carries an unseal share")
		}
	}
}
