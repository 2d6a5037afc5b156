package audit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"

	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"github.com/sovkeys/sovkeys/shared/testkit/s3test"
)

// BenchmarkAuditPipeline measures events numbered and exported per second
// by one audit service (JetStream export, HSM checkpoints) on an embedded
// server, 50,000 events over 20 key stores per iteration: "burst" offers
// them as fast as one publisher can, "rate5000" at 5,000 events/s (the lag
// figures show whether it keeps up):
//
//	go test ./services/audit -run '^$' -bench AuditPipeline -benchtime 1x
//
// `sovkeys audit bench` runs the same load against a live deployment.
func BenchmarkAuditPipeline(b *testing.B) {
	_, nc, js := natstest.Run(b)
	runKeyworker(b, nc, js)
	svc, _ := runAudit(b, nc, js, Config{CheckpointEvery: time.Second, EventPurgeEvery: time.Second, EventKeep: time.Millisecond})
	checkFor(b, 30*time.Second, 20*time.Millisecond, func() error {
		_, err := js.Consumer(context.Background(), auditlog.StreamLog, "audit_export")
		return err
	})
	for _, bc := range []struct {
		name         string
		rate, scopes int
		events       int
	}{{"burst", 0, 20, 50000}, {"rate5000", 5000, 20, 50000}, {"rate1800x200scopes", 1800, 200, 36000}} {
		b.Run(bc.name, func(b *testing.B) {
			var seq, exp float64
			var lagSeq, lagExp uint64
			var events int
			before := svc.Snapshot().Export["central"].Objects
			for b.Loop() {
				res, err := RunLoad(context.Background(), js, LoadConfig{Events: bc.events, Scopes: bc.scopes, Rate: bc.rate}, time.Now)
				if err != nil {
					b.Fatal(err)
				}
				events += bc.events
				seq, exp = res.SequencedPerSec, res.ExportedPerSec
				lagSeq, lagExp = max(lagSeq, res.MaxSequencingLag), max(lagExp, res.MaxExportLag)
			}
			b.ReportMetric(seq, "sequenced/s")
			b.ReportMetric(exp, "exported/s")
			b.ReportMetric(float64(lagSeq), "max-seq-lag")
			b.ReportMetric(float64(lagExp), "max-export-lag")
			reportStorage(b, svc, js, events, before)
		})
	}
}

// BenchmarkAuditPipelineS3 is the same with the central export to S3
// (versitygw on loopback, sharing the machine): 20,000 events.
func BenchmarkAuditPipelineS3(b *testing.B) {
	srv := s3test.RunServer(b)
	srv.CreateBucket(context.Background(), b, "bench-audit", false)
	_, nc, js := natstest.Run(b)
	runKeyworker(b, nc, js)
	svc, _ := runAudit(b, nc, js, Config{CheckpointEvery: time.Second, EventPurgeEvery: time.Second, EventKeep: time.Millisecond, Central: CentralConfig{Backend: BackendS3, S3: writeonce.S3Config{
		Endpoint: srv.Endpoint(), Region: s3test.Region, Bucket: "bench-audit", UsePathStyle: true,
		AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey,
	}}})
	checkFor(b, 30*time.Second, 20*time.Millisecond, func() error {
		_, err := js.Consumer(context.Background(), auditlog.StreamLog, "audit_export")
		return err
	})
	var res LoadResult
	before := svc.Snapshot().Export["central"].Objects
	for b.Loop() {
		var err error
		if res, err = RunLoad(context.Background(), js, LoadConfig{Events: 20000, Scopes: 20}, time.Now); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(res.SequencedPerSec, "sequenced/s")
	b.ReportMetric(res.ExportedPerSec, "exported/s")
	b.ReportMetric(float64(res.MaxExportLag), "max-export-lag")
	reportStorage(b, svc, js, 20000*b.N, before)
}

// reportStorage reports the object writes per 1,000 records and what the
// two streams hold on local disk once the event stream is purged.
func reportStorage(b *testing.B, svc *Service, js jetstream.JetStream, events int, objectsBefore uint64) {
	b.Helper()
	ctx := context.Background()
	objs := svc.Snapshot().Export["central"].Objects - objectsBefore
	b.ReportMetric(float64(objs)*1000/float64(events), "writes/1k-records")
	var evBytes, logBytes uint64
	checkFor(b, 30*time.Second, 100*time.Millisecond, func() error {
		ev, err := js.Stream(ctx, shared.StreamAudit)
		if err != nil {
			return err
		}
		info, err := ev.Info(ctx)
		if err != nil {
			return err
		}
		if evBytes = info.State.Bytes; info.State.Msgs != 0 {
			return fmt.Errorf("%d events not purged yet", info.State.Msgs)
		}
		return nil
	})
	if ls, err := js.Stream(ctx, auditlog.StreamLog); err == nil {
		if info, err := ls.Info(ctx); err == nil {
			logBytes = info.State.Bytes
		}
	}
	b.ReportMetric(float64(evBytes), "event-stream-bytes")
	b.ReportMetric(float64(logBytes)/float64(events), "log-stream-bytes/record")
}
