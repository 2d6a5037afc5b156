package audit

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
)

// LoadConfig drives RunLoad: audit events published straight to the event
// stream, as gateways, authn and keyworkers publish them, against whatever
// audit services are running.
type LoadConfig struct {
	Events int           // total events
	Scopes int           // distinct scopes (XKS key stores), events spread evenly
	Rate   int           // events/s offered; 0 = as fast as the publisher can
	Window int           // async publishes in flight
	Wait   time.Duration // how long to wait for sequencing and export after publishing
}

// LoadResult are the figures of one run.
type LoadResult struct {
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

// RunLoad publishes cfg.Events events over cfg.Scopes fresh scopes and
// measures how fast the running audit services number and export them.
func RunLoad(ctx context.Context, js jetstream.JetStream, cfg LoadConfig, now func() time.Time) (LoadResult, error) {
	if cfg.Events < 1 || cfg.Scopes < 1 || cfg.Scopes > cfg.Events {
		return LoadResult{}, fmt.Errorf("%w: load: need 1 <= scopes <= events", shared.ErrConfigValidation)
	}
	if cfg.Window < 1 {
		cfg.Window = 4096
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 5 * time.Minute
	}
	auditCons, err := js.Consumer(ctx, shared.StreamAudit, shared.ConsumerAudit)
	if err != nil {
		return LoadResult{}, fmt.Errorf("load: is an audit service running? %w", err)
	}
	exportCons, err := js.Consumer(ctx, auditlog.StreamLog, "audit_export")
	if err != nil {
		return LoadResult{}, fmt.Errorf("load: is an audit service running? %w", err)
	}
	logStream, err := js.Stream(ctx, auditlog.StreamLog)
	if err != nil {
		return LoadResult{}, err
	}
	run := strings.ToLower(rand.Text())[:8]
	scopes := make([]auditlog.Scope, cfg.Scopes)
	for i := range scopes {
		scopes[i] = auditlog.Scope{Kind: shared.AuditKindXKS, ID: fmt.Sprintf("loadtest/%s/%d", run, i)}
	}
	res := LoadResult{Events: cfg.Events, Scopes: cfg.Scopes}
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
			h, err := loadHead(ctx, logStream, sc)
			if err != nil {
				return res, err
			}
			if h.seq >= perScope(i) {
				break
			}
			if now().After(deadline) {
				return res, fmt.Errorf("load: %s numbered %d of %d events after %s", sc, h.seq, perScope(i), cfg.Wait)
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

func publishLoad(ctx context.Context, js jetstream.JetStream, cfg LoadConfig, scopes []auditlog.Scope, run string, start time.Time, now func() time.Time) error {
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
