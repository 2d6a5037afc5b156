package mesh

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// Unauthenticated noise
//
// Requests refused before any credential was verified (unknown key store
// prefix, bad path or method, oversize body) can be made by anyone, as
// fast as they like, with any URL. Auditing each in its own scope would let
// a stranger create unbounded scopes and fill the audit log; not auditing
// them would hide a probe. A NoiseAuditor counts them instead and publishes
// ONE summary event per interval in the single unauthenticated scope
// (kind "unauthenticated", empty scope): counts per API and error code, the
// number of distinct sources (bounded) and a few sample addresses. Memory
// is bounded whatever the callers send.

// APINoiseSummary is the API of a summary event.
const APINoiseSummary shared.API = "unauthenticated.summary"

const (
	// DefaultNoiseInterval is how often a summary is published (if any
	// request was refused meanwhile).
	DefaultNoiseInterval = 10 * time.Second
	maxNoiseKeys         = 64   // distinct api/code pairs counted per interval
	maxNoiseSources      = 4096 // distinct source addresses counted per interval
	noiseSamples         = 5
)

// NoiseAuditor aggregates unauthenticated refusals into periodic summaries.
type NoiseAuditor struct {
	js       jetstream.JetStream
	service  string
	log      *slog.Logger
	now      func() time.Time
	interval time.Duration
	id       string

	mu      sync.Mutex
	since   time.Time
	total   uint64
	counts  map[string]uint64
	sources map[string]bool
	samples []string
	seq     uint64
}

// NewNoiseAuditor returns an aggregator publishing as service every
// interval (DefaultNoiseInterval when 0). Run must be running.
func NewNoiseAuditor(js jetstream.JetStream, service string, interval time.Duration, log *slog.Logger, now func() time.Time) *NoiseAuditor {
	if interval <= 0 {
		interval = DefaultNoiseInterval
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &NoiseAuditor{js: js, service: service, log: log, now: now, interval: interval,
		id: hex.EncodeToString(b[:]), counts: map[string]uint64{}, sources: map[string]bool{}, since: now()}
}

// Add counts one refusal.
func (n *NoiseAuditor) Add(api shared.API, code shared.Code, sourceIP string) {
	key := string(api) + " " + string(code)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.total++
	if _, ok := n.counts[key]; ok || len(n.counts) < maxNoiseKeys {
		n.counts[key]++
	} else {
		n.counts["other"]++
	}
	if !n.sources[sourceIP] && len(n.sources) < maxNoiseSources {
		n.sources[sourceIP] = true
		if len(n.samples) < noiseSamples {
			n.samples = append(n.samples, sourceIP)
		}
	}
}

// Run publishes a summary every interval until ctx ends, then a last one.
func (n *NoiseAuditor) Run(ctx context.Context) {
	t := time.NewTicker(n.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			n.Flush(fctx)
			cancel()
			return
		case <-t.C:
			n.Flush(ctx)
		}
	}
}

// Flush publishes the summary of the refusals counted since the last one
// (nothing when there were none). A summary that cannot be published is
// kept and merged into the next.
func (n *NoiseAuditor) Flush(ctx context.Context) {
	n.mu.Lock()
	if n.total == 0 {
		n.since = n.now()
		n.mu.Unlock()
		return
	}
	n.seq++
	end := n.now()
	params := map[string]string{
		"total":            strconv.FormatUint(n.total, 10),
		"distinct_sources": strconv.Itoa(len(n.sources)),
	}
	if len(n.sources) >= maxNoiseSources {
		params["distinct_sources"] += "+"
	}
	for k, c := range n.counts {
		params["count "+k] = strconv.FormatUint(c, 10)
	}
	for i, ip := range n.samples {
		params["sample_source_"+strconv.Itoa(i+1)] = ip
	}
	ev := &shared.AuditEvent{
		RequestID: "noise-" + n.id + "-" + strconv.FormatUint(n.seq, 10),
		Kind:      shared.AuditKindUnauthenticated, API: APINoiseSummary, Service: n.service,
		Start: n.since, End: end, Result: shared.ResultDenied, Params: params,
	}
	n.mu.Unlock()
	if err := PublishAudit(ctx, n.js, ev); err != nil {
		n.log.Warn("unauthenticated summary not published; kept for the next", "err", err)
		return
	}
	n.mu.Lock()
	n.reset(end, ev)
	n.mu.Unlock()
}

// reset subtracts the published summary from the counts (refusals counted
// while it was published stay for the next).
func (n *NoiseAuditor) reset(end time.Time, ev *shared.AuditEvent) {
	total, _ := strconv.ParseUint(ev.Params["total"], 10, 64)
	n.total -= min(total, n.total)
	for k := range n.counts {
		c, _ := strconv.ParseUint(ev.Params["count "+k], 10, 64)
		if n.counts[k] -= min(c, n.counts[k]); n.counts[k] == 0 {
			delete(n.counts, k)
		}
	}
	if n.total == 0 {
		clear(n.counts)
	}
	clear(n.sources)
	n.samples = n.samples[:0]
	n.since = end
}
