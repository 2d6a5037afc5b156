package registry

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// Freshness
//
// A watch that silently stops delivering leaves a cache serving its last
// snapshot forever. The cache is fresh only while (1) its watch runs and has
// delivered the initial values, and (2) every latest revision the bucket's
// stream reported (a cheap stream info, every StaleAfter/4) has been
// delivered by the watch within StaleAfter of the report. A KV leader
// election is not staleness: while no leader answers, no write can land and
// no report is made, so only a revision the server confirmed and the watch
// then failed to deliver, or an ended watch, makes the cache stale.
//
// Limitation: a message removed before the watch delivered it (KV TTL,
// PurgeDeletes) would keep the bucket's last sequence ahead of the watch;
// the mirrored buckets (key stores, keys, tenants, kill switches) have
// neither.
type freshness struct {
	staleAfter time.Duration

	mu       sync.Mutex
	w        jetstream.KeyWatcher
	watching bool   // the current watch delivered its initial values and runs
	seen     uint64 // highest revision delivered
	// pendingSeq is a revision the bucket reported at pendingAt that the
	// watch had not delivered then (0: none outstanding).
	pendingSeq uint64
	pendingAt  time.Time
	wasStale   bool
}

func (f *freshness) setWatcher(w jetstream.KeyWatcher) {
	f.mu.Lock()
	f.w, f.watching = w, false
	f.mu.Unlock()
}

func (f *freshness) watcher() jetstream.KeyWatcher {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w
}

func (f *freshness) watchEnded() {
	f.mu.Lock()
	f.w, f.watching = nil, false
	f.mu.Unlock()
}

func (f *freshness) caughtUp(w jetstream.KeyWatcher) {
	f.mu.Lock()
	if f.w == w {
		f.watching = true
	}
	f.mu.Unlock()
}

func (f *freshness) saw(rev uint64) {
	f.mu.Lock()
	f.seen = max(f.seen, rev)
	if f.pendingSeq != 0 && f.seen >= f.pendingSeq {
		f.pendingSeq = 0
	}
	f.mu.Unlock()
}

// observe records the bucket's latest revision as reported at now.
func (f *freshness) observe(last uint64, now time.Time) {
	f.mu.Lock()
	if f.pendingSeq != 0 && f.seen >= f.pendingSeq {
		f.pendingSeq = 0
	}
	if f.pendingSeq == 0 && last > f.seen {
		f.pendingSeq, f.pendingAt = last, now
	}
	f.mu.Unlock()
}

// stale says why the cache is stale at now ("" when fresh).
func (f *freshness) stale(now time.Time) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !f.watching:
		return "watch is not running"
	case f.pendingSeq > f.seen && now.Sub(f.pendingAt) > f.staleAfter:
		return fmt.Sprintf("bucket reached revision %d %s ago; the watch delivered only %d",
			f.pendingSeq, now.Sub(f.pendingAt).Round(time.Millisecond), f.seen)
	}
	return ""
}

// transition reports whether staleness changed since the last call.
func (f *freshness) transition(stale bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	changed := stale != f.wasStale
	f.wasStale = stale
	return changed
}

// probe asks the bucket's latest revision every probeEvery and logs when
// the cache turns stale or fresh again.
func (c *Cache[T]) probe(ctx context.Context) {
	t := time.NewTicker(c.opts.probeEvery)
	defer t.Stop()
	defer func() {
		if c.fresh.transition(false) { // this watch ends: it no longer counts as stale
			metrics.WatchStale(c.bucket, false)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, c.opts.staleAfter)
		st, err := c.kv.Status(pctx)
		cancel()
		if bs, ok := st.(*jetstream.KeyValueBucketStatus); err == nil && ok {
			c.fresh.observe(bs.StreamInfo().State.LastSeq, c.opts.now())
		}
		why := c.fresh.stale(c.opts.now())
		if !c.fresh.transition(why != "") {
			continue
		}
		metrics.WatchStale(c.bucket, why != "") // alert RegistryWatchStale
		if why != "" {
			c.logger.Error("registry: state is stale; crypto served from it stops", "bucket", c.bucket, "why", why)
		} else {
			c.logger.Info("registry: state is current again", "bucket", c.bucket)
		}
	}
}
