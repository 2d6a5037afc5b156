package mesh

import (
	"context"
	"crypto/rand"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// Failed SigV4 calls against real key stores (2026-12-07)
//
// A request that names an existing key store prefix but fails SigV4 is
// refused before any credential is proven. One record per refusal let
// anyone who knows a prefix (it is in the URL AWS calls) write ~10,000
// permanent records a second into that key store's log. A
// FailedAuthAuditor counts them instead and publishes, per prefix and per
// interval, ONE event in the key store's scope with the count and the
// source addresses: storage is bounded by the number of key stores (the
// registry's, never the caller's naming) whatever the rate. Counts are
// kept in memory until published (a crash loses at most one interval of
// counts, never a record of a request that was served).

// APIFailedAuthSummary is the API of a per-prefix summary event.
const APIFailedAuthSummary shared.API = "xks.authentication_failed.summary"

const (
	// DefaultFailedAuthInterval is how often summaries are published.
	DefaultFailedAuthInterval = 10 * time.Second
	maxFailedAuthScopes       = 4096 // key stores counted per interval
	maxFailedAuthSources      = 64   // source addresses listed per key store
)

type failedAuthCount struct {
	total   uint64
	sources map[string]uint64
	more    uint64 // refusals from sources beyond maxFailedAuthSources
}

// FailedAuthAuditor aggregates failed authentications per XKS scope.
type FailedAuthAuditor struct {
	publish  func(context.Context, *shared.AuditEvent) error
	service  string
	log      *slog.Logger
	now      func() time.Time
	interval time.Duration
	id       string

	mu      sync.Mutex
	since   time.Time
	seq     uint64
	scopes  map[string]*failedAuthCount
	dropped uint64 // refusals beyond maxFailedAuthScopes (counted in the next summary's log line)
}

// NewFailedAuthAuditor returns an aggregator publishing through publish
// (the service's audit batcher, or PublishAudit on js when nil) as
// service every interval (DefaultFailedAuthInterval when 0).
func NewFailedAuthAuditor(js jetstream.JetStream, publish func(context.Context, *shared.AuditEvent) error, service string, interval time.Duration, log *slog.Logger, now func() time.Time) *FailedAuthAuditor {
	if interval <= 0 {
		interval = DefaultFailedAuthInterval
	}
	if publish == nil {
		publish = func(ctx context.Context, ev *shared.AuditEvent) error { return PublishAudit(ctx, js, ev) }
	}
	return &FailedAuthAuditor{publish: publish, service: service, log: log, now: now, interval: interval,
		id: strings.ToLower(rand.Text()[:10]), since: now(), scopes: make(map[string]*failedAuthCount)}
}

// Add counts one failed authentication against the key store scope from
// sourceIP.
func (a *FailedAuthAuditor) Add(scope, sourceIP string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.scopes[scope]
	if c == nil {
		if len(a.scopes) >= maxFailedAuthScopes {
			a.dropped++
			return
		}
		c = &failedAuthCount{sources: make(map[string]uint64)}
		a.scopes[scope] = c
	}
	c.total++
	if _, ok := c.sources[sourceIP]; ok || len(c.sources) < maxFailedAuthSources {
		c.sources[sourceIP]++
	} else {
		c.more++
	}
}

// Run publishes the summaries every interval until ctx ends, then a last time.
func (a *FailedAuthAuditor) Run(ctx context.Context) {
	t := time.NewTicker(a.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			a.Flush(fctx)
			cancel()
			return
		case <-t.C:
			a.Flush(ctx)
		}
	}
}

// Flush publishes one summary per scope counted since the last flush. A
// summary that cannot be published is merged into the next.
func (a *FailedAuthAuditor) Flush(ctx context.Context) {
	a.mu.Lock()
	scopes, since, end := a.scopes, a.since, a.now()
	a.scopes, a.since = make(map[string]*failedAuthCount), end
	if a.dropped > 0 {
		a.log.Warn("failed authentications beyond the key store bound were not summarised", "count", a.dropped)
		a.dropped = 0
	}
	a.mu.Unlock()
	names := make([]string, 0, len(scopes))
	for k := range scopes {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, scope := range names {
		c := scopes[scope]
		a.mu.Lock()
		a.seq++
		seq := a.seq
		a.mu.Unlock()
		ev := failedAuthEvent(a.service, a.id, seq, scope, since, end, c)
		if err := a.publish(ctx, ev); err != nil {
			a.log.Warn("failed-authentication summary not published; kept for the next", "scope", scope, "err", err)
			a.merge(scope, c)
		}
	}
}

func (a *FailedAuthAuditor) merge(scope string, c *failedAuthCount) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := a.scopes[scope]
	if cur == nil {
		a.scopes[scope] = c
		return
	}
	cur.total += c.total
	cur.more += c.more
	for ip, n := range c.sources {
		if _, ok := cur.sources[ip]; ok || len(cur.sources) < maxFailedAuthSources {
			cur.sources[ip] += n
		} else {
			cur.more += n
		}
	}
}

// failedAuthEvent is the summary event of one scope: params "total",
// "sources" (address=count, comma-separated, ascending by address) and
// "other_sources" (refusals from addresses beyond the listed ones).
func failedAuthEvent(service, id string, seq uint64, scope string, since, end time.Time, c *failedAuthCount) *shared.AuditEvent {
	ips := make([]string, 0, len(c.sources))
	for ip := range c.sources {
		ips = append(ips, ip)
	}
	slices.Sort(ips)
	for i, ip := range ips {
		ips[i] = ip + "=" + strconv.FormatUint(c.sources[ip], 10)
	}
	params := map[string]string{"total": strconv.FormatUint(c.total, 10), "sources": strings.Join(ips, ",")}
	if c.more > 0 {
		params["other_sources"] = strconv.FormatUint(c.more, 10)
	}
	return &shared.AuditEvent{
		RequestID: "authfail-" + id + "-" + strconv.FormatUint(seq, 10),
		Kind:      shared.AuditKindXKS, Scope: scope, API: APIFailedAuthSummary, Service: service,
		Start: since, End: end, Result: shared.ResultDenied, Code: shared.CodeAuthenticationFailed,
		Reason: "failed SigV4 authentications, summarised", Params: params,
	}
}
