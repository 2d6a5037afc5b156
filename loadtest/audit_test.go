package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/services/audit"
	"github.com/sovkeys/sovkeys/services/keyworker/keyworkertest"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"github.com/sovkeys/sovkeys/shared/testkit/s3test"
)

const (
	auditReady = 30 * time.Second      // for the audit service's consumers
	pollEvery  = 20 * time.Millisecond // between polls
)

// loadConn is the load generator's own connection, as in a deployment: the
// services' pending async publishes would otherwise count against the
// generator's (nats.go limits them per JetStream handle).
func loadConn(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// runAuditPipeline runs a keyworker (whose HSM signs checkpoints) and an
// audit service in this process until the test ends, and waits until the
// export consumer exists.
func runAuditPipeline(t testing.TB, nc *nats.Conn, js jetstream.JetStream, cfg audit.Config) {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	keyworkertest.Run(t, nc, js, logger)
	cfg.Topology = mesh.DefaultTopology()
	cfg.MaxExportBackoff = time.Second
	svc, err := audit.New(cfg, audit.Deps{NC: nc, JS: js, Logger: logger, Tracer: noop.NewTracerProvider(), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := svc.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("audit: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	testkit.CheckFor(t, auditReady, pollEvery, func() error {
		_, err := js.Consumer(context.Background(), auditlog.StreamLog, auditExportConsumer)
		return err
	})
}

// TestAuditLoad runs `loadtest -api audit` against an audit service and
// checks the report against the log: every scope numbered to its last event.
func TestAuditLoad(t *testing.T) {
	ns, nc, js := natstest.Run(t)
	runAuditPipeline(t, nc, js, audit.Config{CheckpointEvery: time.Second})
	for _, tc := range []struct {
		name string
		args []string
		mode string
	}{
		{"burst", []string{"-events", "2000", "-scopes", "20"}, "burst"},
		{"rate", []string{"-rate", "1000", "-duration", "1s", "-scopes", "10"}, "open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			jsonFile := filepath.Join(t.TempDir(), "audit.json")
			var stdout, stderr bytes.Buffer
			args := append([]string{"-api", "audit", "-nats", ns.ClientURL(), "-wait", "2m", "-json", jsonFile}, tc.args...)
			if code := run(context.Background(), args, noEnv, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
			}
			b, err := os.ReadFile(jsonFile)
			if err != nil {
				t.Fatal(err)
			}
			var rep Report
			if err := json.Unmarshal(b, &rep); err != nil {
				t.Fatal(err)
			}
			a := rep.Audit
			switch {
			case a == nil:
				t.Fatalf("no audit section in %s", b)
			case !rep.Pass || rep.Mode != tc.mode || rep.API != APIAudit:
				t.Fatalf("report pass=%v mode=%q api=%q, want pass in mode %q", rep.Pass, rep.Mode, rep.API, tc.mode)
			case a.SequencedPerSec <= 0 || a.ExportedPerSec <= 0 || a.ExportedSecs < a.SequencedSecs:
				t.Fatalf("implausible figures: %+v", *a)
			}
			if !strings.Contains(stdout.String(), "exported") || !strings.Contains(stdout.String(), "verdict     PASS") {
				t.Fatalf("text report:\n%s", &stdout)
			}
		})
	}
	// Every event of the two runs is in the log: 2000 + 1000 records.
	info, err := js.Consumer(context.Background(), auditlog.StreamLog, auditExportConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if ci := info.CachedInfo(); ci.NumPending != 0 || ci.NumAckPending != 0 {
		t.Fatalf("export consumer not drained: %+v", ci)
	}
}

// TestAuditLoadNoService: without a running audit service the run fails
// (exit 1) with a message that says so, instead of waiting for nothing.
func TestAuditLoadNoService(t *testing.T) {
	ns, _, _ := natstest.Run(t)
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-api", "audit", "-nats", ns.ClientURL(), "-events", "10", "-scopes", "1"}, noEnv, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "is an audit service running?") {
		t.Fatalf("exit %d, stderr:\n%s", code, &stderr)
	}
}

func noEnv(string) string { return "" }

// BenchmarkAuditPipeline measures events numbered and exported per second
// by one audit service (JetStream export, HSM checkpoints) on an embedded
// server, 50,000 events over 20 key stores per iteration: "burst" offers
// them as fast as one publisher can, "rate5000" at 5,000 events/s (the lag
// figures show whether it keeps up):
//
//	go test ./loadtest -run '^$' -bench AuditPipeline -benchtime 1x
//
// `loadtest -api audit` runs the same load against a live deployment.
func BenchmarkAuditPipeline(b *testing.B) {
	ns, nc, js := natstest.Run(b)
	runAuditPipeline(b, nc, js, audit.Config{CheckpointEvery: time.Second})
	load := loadConn(b, ns.ClientURL())
	for _, bc := range []struct {
		name string
		rate int
	}{{"burst", 0}, {"rate5000", 5000}} {
		b.Run(bc.name, func(b *testing.B) {
			var seq, exp float64
			var lagSeq, lagExp uint64
			for b.Loop() {
				res, err := runAuditLoad(context.Background(), load, auditLoad{Events: 50000, Scopes: 20, Rate: bc.rate}, time.Now)
				if err != nil {
					b.Fatal(err)
				}
				seq, exp = res.SequencedPerSec, res.ExportedPerSec
				lagSeq, lagExp = max(lagSeq, res.MaxSequencingLag), max(lagExp, res.MaxExportLag)
			}
			b.ReportMetric(seq, "sequenced/s")
			b.ReportMetric(exp, "exported/s")
			b.ReportMetric(float64(lagSeq), "max-seq-lag")
			b.ReportMetric(float64(lagExp), "max-export-lag")
		})
	}
}

// BenchmarkAuditPipelineS3 is the same with the central export to S3
// (versitygw on loopback, sharing the machine): 20,000 events.
func BenchmarkAuditPipelineS3(b *testing.B) {
	srv := s3test.RunServer(b)
	srv.CreateBucket(context.Background(), b, "bench-audit", false)
	ns, nc, js := natstest.Run(b)
	runAuditPipeline(b, nc, js, audit.Config{CheckpointEvery: time.Second, Central: audit.CentralConfig{Backend: audit.BackendS3, S3: writeonce.S3Config{
		Endpoint: srv.Endpoint(), Region: s3test.Region, Bucket: "bench-audit", UsePathStyle: true,
		AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey,
	}}})
	load := loadConn(b, ns.ClientURL())
	var res AuditReport
	for b.Loop() {
		var err error
		if res, err = runAuditLoad(context.Background(), load, auditLoad{Events: 20000, Scopes: 20}, time.Now); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(res.SequencedPerSec, "sequenced/s")
	b.ReportMetric(res.ExportedPerSec, "exported/s")
	b.ReportMetric(float64(res.MaxExportLag), "max-export-lag")
}
