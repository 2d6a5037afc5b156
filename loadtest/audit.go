package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// auditExportConsumer is the durable through which the audit service
// exports the log to the central store (services/audit destinations.go).
const auditExportConsumer = shared.ConsumerAuditExport

// maxAuditWindow bounds the async publishes in flight well below nats.go's
// default PublishAsyncMaxPending (4,000): at that limit PublishMsgAsync
// stalls and, when the server is slower than 200 ms to ack, fails the run
// with "stalled with too many outstanding async published messages".
const maxAuditWindow = 2048

// auditLoad drives runAuditLoad: audit events published straight to the
// event stream, as gateways, authn and keyworkers publish them, against
// whatever audit services are running.
type auditLoad struct {
	Events int           // total events
	Scopes int           // distinct scopes (XKS key stores), events spread evenly
	Rate   int           // events/s offered; 0 = as fast as the publisher can
	Window int           // async publishes in flight
	Wait   time.Duration // how long to wait for sequencing and export after publishing
}

// AuditReport are the figures of one -api audit run.
type AuditReport struct {
	Events      int     `json:"events"`
	Scopes      int     `json:"scopes"`
	PublishSecs float64 `json:"publish_seconds"`
	// SequencedSecs / ExportedSecs: from the first publish until every
	// event is numbered / every record is in the central bucket.
	SequencedSecs float64 `json:"sequenced_seconds"`
	ExportedSecs  float64 `json:"exported_seconds"`
	// DrainSecs: from the last publish until every record is exported.
	DrainSecs       float64 `json:"drain_seconds"`
	SequencedPerSec float64 `json:"sequenced_per_second"`
	ExportedPerSec  float64 `json:"exported_per_second"`
	// Max lags sampled every 100 ms: events not yet numbered, log messages
	// (record batches) not yet exported.
	MaxSequencingLag uint64 `json:"max_sequencing_lag"`
	MaxExportLag     uint64 `json:"max_export_lag"`
}

// runAuditLoad publishes cfg.Events events over cfg.Scopes fresh scopes and
// measures how fast the running audit services number and export them.
func runAuditLoad(ctx context.Context, js jetstream.JetStream, cfg auditLoad, now func() time.Time) (AuditReport, error) {
	if cfg.Events < 1 || cfg.Scopes < 1 || cfg.Scopes > cfg.Events {
		return AuditReport{}, fmt.Errorf("%w: need 1 <= scopes <= events", ErrConfigValidation)
	}
	if cfg.Window < 1 || cfg.Window > maxAuditWindow {
		cfg.Window = maxAuditWindow
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 5 * time.Minute
	}
	auditCons, err := js.Consumer(ctx, shared.StreamAudit, shared.ConsumerAudit)
	if err != nil {
		return AuditReport{}, fmt.Errorf("load: is an audit service running? %w", err)
	}
	exportCons, err := js.Consumer(ctx, auditlog.StreamLog, auditExportConsumer)
	if err != nil {
		return AuditReport{}, fmt.Errorf("load: is an audit service running? %w", err)
	}
	logStream, err := js.Stream(ctx, auditlog.StreamLog)
	if err != nil {
		return AuditReport{}, err
	}
	run := strings.ToLower(rand.Text())[:8]
	scopes := make([]auditlog.Scope, cfg.Scopes)
	for i := range scopes {
		scopes[i] = auditlog.Scope{Kind: shared.AuditKindXKS, ID: fmt.Sprintf("loadtest/%s/%d", run, i)}
	}
	res := AuditReport{Events: cfg.Events, Scopes: cfg.Scopes}
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan [2]uint64, 1)
	go func() { sampled <- sampleLags(sctx, auditCons, exportCons) }()
	lags := func() {
		stopSampling()
		if l, ok := <-sampled; ok {
			res.MaxSequencingLag, res.MaxExportLag = l[0], l[1]
			close(sampled)
		}
	}
	defer lags()

	start := now()
	if err := publishLoad(ctx, js, cfg, scopes, run, start, now); err != nil {
		return res, err
	}
	res.PublishSecs = now().Sub(start).Seconds()
	deadline := now().Add(cfg.Wait)
	perScope := func(i int) uint64 {
		n := cfg.Events / cfg.Scopes
		if i < cfg.Events%cfg.Scopes {
			n++
		}
		return uint64(n)
	}
	for i, sc := range scopes { // wait until every scope's head is its last event
		for {
			seq, err := headSeq(ctx, logStream, sc)
			if err != nil {
				return res, err
			}
			if seq >= perScope(i) {
				break
			}
			if now().After(deadline) {
				return res, fmt.Errorf("load: %s numbered %d of %d events after %s", sc, seq, perScope(i), cfg.Wait)
			}
			if err := sleep(ctx, 20*time.Millisecond); err != nil {
				return res, err
			}
		}
	}
	res.SequencedSecs = now().Sub(start).Seconds()
	for {
		info, err := exportCons.Info(ctx)
		if err != nil {
			return res, err
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			break
		}
		if now().After(deadline) {
			return res, fmt.Errorf("load: export lag %d after %s", info.NumPending+uint64(info.NumAckPending), cfg.Wait)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return res, err
		}
	}
	res.ExportedSecs = now().Sub(start).Seconds()
	res.DrainSecs = res.ExportedSecs - res.PublishSecs
	res.SequencedPerSec = float64(cfg.Events) / res.SequencedSecs
	res.ExportedPerSec = float64(cfg.Events) / res.ExportedSecs
	lags()
	return res, nil
}

func publishLoad(ctx context.Context, js jetstream.JetStream, cfg auditLoad, scopes []auditlog.Scope, run string, start time.Time, now func() time.Time) error {
	inflight := make(chan jetstream.PubAckFuture, cfg.Window)
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		for f := range inflight {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				errc <- fmt.Errorf("load: publish: %w", err)
				for range inflight {
				}
				return
			case <-ctx.Done():
				errc <- ctx.Err()
				for range inflight {
				}
				return
			}
		}
	}()
	var perr error
	for i := 0; i < cfg.Events && perr == nil; i++ {
		if cfg.Rate > 0 {
			if due := start.Add(time.Duration(i) * time.Second / time.Duration(cfg.Rate)); now().Before(due) {
				if err := sleep(ctx, due.Sub(now())); err != nil {
					perr = err
					break
				}
			}
		}
		sc := scopes[i%len(scopes)]
		at := now()
		ev := &shared.AuditEvent{
			Version: shared.AuditEventVersion, RequestID: fmt.Sprintf("load-%s-%d", run, i), Kind: sc.Kind, Scope: sc.ID,
			API: shared.APIXKSEncrypt, Service: "keyworker", Start: at, End: at, CallerType: "sigv4",
			CallerID: "AKIALOADTEST", Principal: "arn:aws:iam::123456789012:user/load", SourceIP: "192.0.2.1",
			KeyID: "key-1", KMSRequestID: fmt.Sprintf("kms-%d", i), KMSOperation: "Encrypt", Result: shared.ResultSuccess,
			Params: map[string]string{"plaintext_bytes": "4096", "pool": "default"},
		}
		data, err := json.Marshal(ev)
		if err != nil {
			perr = err
			break
		}
		m := nats.NewMsg(ev.Subject())
		m.Data = data
		m.Header.Set(shared.HeaderMsgID, ev.Service+":"+ev.RequestID)
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			perr = fmt.Errorf("load: publish: %w", err)
			break
		}
		select {
		case inflight <- f:
		case err := <-errc:
			perr = err
		}
	}
	close(inflight)
	if err := <-errc; err != nil && perr == nil {
		perr = err
	}
	return perr
}

// headSeq is the sequence number of the newest record of sc in the audit
// log: 0 before its first.
func headSeq(ctx context.Context, stream jetstream.Stream, sc auditlog.Scope) (uint64, error) {
	m, err := stream.GetLastMsgForSubject(ctx, sc.RecordSubject())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("load: head of %s: %w", sc, err)
	}
	lines := auditlog.SplitBatch(m.Data)
	if len(lines) == 0 {
		return 0, fmt.Errorf("load: %s: empty batch at stream sequence %d", sc, m.Sequence)
	}
	r, err := auditlog.ParseRecord(lines[len(lines)-1])
	if err != nil {
		return 0, fmt.Errorf("load: %s at stream sequence %d: %w", sc, m.Sequence, err)
	}
	return r.Seq, nil
}

// sampleLags returns the largest sequencing and export lags seen.
func sampleLags(ctx context.Context, auditCons, exportCons jetstream.Consumer) [2]uint64 {
	var maxLag [2]uint64
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if info, err := auditCons.Info(ctx); err == nil {
			maxLag[0] = max(maxLag[0], info.NumPending+uint64(info.NumAckPending))
		}
		if info, err := exportCons.Info(ctx); err == nil {
			maxLag[1] = max(maxLag[1], info.NumPending+uint64(info.NumAckPending))
		}
		select {
		case <-ctx.Done():
			return maxLag
		case <-t.C:
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// executeAudit connects to NATS as cfg says, runs the audit load and builds
// the report: it passes when every event was numbered and exported in time.
func executeAudit(ctx context.Context, cfg Config, progress io.Writer, now func() time.Time) (Report, error) {
	logger := slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nc, js, err := mesh.Connect(ctx, mesh.ConnConfig{URL: cfg.NATSURL, CredsFile: cfg.NATSCreds, CAFile: cfg.NATSCA, Name: "sovkeys-loadtest"}, logger)
	if err != nil {
		return Report{}, err
	}
	defer nc.Close()
	load := auditLoad{Events: cfg.Events, Scopes: cfg.Scopes, Rate: int(cfg.Rate), Wait: cfg.AuditWait}
	mode, offered := "burst", "as fast as one publisher can"
	if load.Rate > 0 {
		mode, offered = "open", fmt.Sprintf("%d events/s", load.Rate)
	}
	fmt.Fprintf(progress, "loadtest: audit %d events over %d scopes, %s\n", load.Events, load.Scopes, offered)
	started := now()
	res, err := runAuditLoad(ctx, js, load, now)
	if err != nil {
		return Report{}, err
	}
	rep := Report{
		Started: started.UTC(), API: APIAudit, Target: nc.ConnectedUrlRedacted(), Op: OpPublish, Mode: mode,
		OfferedRate: cfg.Rate, Duration: cfg.Duration.String(), WindowSeconds: res.ExportedSecs,
		Requests: uint64(res.Events), Succeeded: uint64(res.Events), Throughput: res.ExportedPerSec,
		Errors: []errorCount{}, Timeline: []Second{}, Audit: &res, Pass: true,
		Verdict: fmt.Sprintf("PASS: %d events numbered and exported, %.0f/s exported", res.Events, res.ExportedPerSec),
	}
	return rep, nil
}

// writeAuditText prints an audit run for people.
func (rep Report) writeAuditText(w io.Writer) {
	a := rep.Audit
	fmt.Fprintf(w, "target      %s  %d audit events over %d scopes\n", rep.Target, a.Events, a.Scopes)
	if rep.Mode == "open" {
		fmt.Fprintf(w, "load        %.0f events/s offered, published in %.1f s\n", rep.OfferedRate, a.PublishSecs)
	} else {
		fmt.Fprintf(w, "load        burst (as fast as one publisher can), published in %.1f s\n", a.PublishSecs)
	}
	fmt.Fprintf(w, "sequenced   all after %.1f s: %.0f events/s\n", a.SequencedSecs, a.SequencedPerSec)
	fmt.Fprintf(w, "exported    all after %.1f s: %.0f events/s; drained %.1f s after the last publish\n", a.ExportedSecs, a.ExportedPerSec, a.DrainSecs)
	fmt.Fprintf(w, "max lag     %d events not yet numbered, %d log messages not yet exported\n", a.MaxSequencingLag, a.MaxExportLag)
	fmt.Fprintf(w, "verdict     %s\n", rep.Verdict)
}
