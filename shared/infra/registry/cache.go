package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// Cache mirrors a KV bucket in memory through a watch, so request paths read
// key stores and keys without a round trip. The bucket stays the source of
// truth: every process converges on it, and a change made anywhere in the
// cluster reaches every cache within the watch's delivery time.
//
// A mirror that may be behind must not be served from: a released kill
// switch or a disabled key would otherwise keep (not) applying. Fresh says
// whether the cache can show it is current (freshness.go); callers stop
// serving crypto while it cannot. When the watch ends the cache restarts it
// by itself and swaps in the new snapshot once it is complete.
type Cache[T any] struct {
	kv     jetstream.KeyValue
	bucket string
	logger *slog.Logger
	onPut  func(key string, v T)
	opts   options

	mu      sync.RWMutex
	entries map[string]T
	ready   chan struct{}

	fresh freshness
}

// Option tunes a Cache.
type Option func(*options)

type options struct {
	now        func() time.Time
	staleAfter time.Duration
	probeEvery time.Duration
	retryEvery time.Duration
	onEntry    func(jetstream.KeyValueEntry)
}

// WithEntryHook calls fn with every entry the watch delivers, deletes and
// purges included, before the cache applies it: for callers that decide on
// an entry's revision or server time, not only its value.
func WithEntryHook(fn func(jetstream.KeyValueEntry)) Option {
	return func(o *options) { o.onEntry = fn }
}

// WithClock injects the clock freshness is measured with.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithStaleAfter sets how long the cache may stay behind the bucket's
// latest revision before it is stale (default DefaultStaleAfter).
func WithStaleAfter(d time.Duration) Option { return func(o *options) { o.staleAfter = d } }

// WithProbeEvery sets how often the bucket's latest revision is asked for.
func WithProbeEvery(d time.Duration) Option { return func(o *options) { o.probeEvery = d } }

// withRetryEvery sets the delay before a watch is restarted (tests).
func withRetryEvery(d time.Duration) Option { return func(o *options) { o.retryEvery = d } }

// DefaultStaleAfter is the freshness bound: a cache that cannot show it has
// seen the bucket's latest revision within it is stale.
const DefaultStaleAfter = 2 * time.Second

// WatchBucket starts mirroring kv until ctx ends. onPut (optional) is called
// for every update, e.g. to drop derived state such as unsealed secrets.
func WatchBucket[T any](ctx context.Context, kv jetstream.KeyValue, logger *slog.Logger, onPut func(key string, v T), opts ...Option) (*Cache[T], error) {
	o := options{now: time.Now, staleAfter: DefaultStaleAfter, probeEvery: DefaultStaleAfter / 4, retryEvery: 250 * time.Millisecond}
	for _, f := range opts {
		f(&o)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("registry: watch %s: %w", kv.Bucket(), err)
	}
	c := &Cache[T]{kv: kv, bucket: kv.Bucket(), logger: logger, onPut: onPut, opts: o,
		entries: map[string]T{}, ready: make(chan struct{})}
	c.fresh.staleAfter = o.staleAfter
	go c.run(ctx, w)
	metrics.WatchStarted(c.bucket)
	go c.probe(ctx)
	return c, nil
}

// run consumes watches until ctx ends, starting a new one whenever one ends.
func (c *Cache[T]) run(ctx context.Context, w jetstream.KeyWatcher) {
	first := true
	for {
		c.fresh.setWatcher(w)
		c.consume(ctx, w, first)
		_ = w.Stop()
		c.fresh.watchEnded()
		if ctx.Err() != nil {
			return
		}
		first = false
		c.logger.Error("registry: watch ended; serving from this bucket stops until it is back", "bucket", c.bucket)
		for {
			t := time.NewTimer(c.opts.retryEvery)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			nw, err := c.kv.WatchAll(ctx)
			if err == nil {
				w = nw
				break
			}
			c.logger.Warn("registry: watch restart failed", "bucket", c.bucket, "err", err)
		}
	}
}

// consume applies one watch's updates. The initial values are collected
// apart and swapped in whole at the end-of-initial-values marker, so keys
// deleted while no watch ran disappear too.
func (c *Cache[T]) consume(ctx context.Context, w jetstream.KeyWatcher, first bool) {
	var initial map[string]jetstream.KeyValueEntry
	if !first {
		initial = map[string]jetstream.KeyValueEntry{}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			switch {
			case e == nil && initial != nil:
				c.swap(initial)
				initial = nil
				c.fresh.caughtUp(w)
			case e == nil:
				if first {
					close(c.ready)
					first = false
				}
				c.fresh.caughtUp(w)
			case initial != nil:
				initial[e.Key()] = e
				c.fresh.saw(e.Revision())
			default:
				c.apply(e)
				c.fresh.saw(e.Revision())
			}
		}
	}
}

// swap replaces the entries with a restarted watch's initial values.
func (c *Cache[T]) swap(initial map[string]jetstream.KeyValueEntry) {
	c.mu.RLock()
	var gone []string
	for k := range c.entries {
		if e, ok := initial[k]; !ok || e.Operation() != jetstream.KeyValuePut {
			gone = append(gone, k)
		}
	}
	c.mu.RUnlock()
	for _, e := range initial {
		if c.opts.onEntry != nil && e.Operation() != jetstream.KeyValuePut {
			c.opts.onEntry(e) // puts reach it through apply
		}
		if e.Operation() == jetstream.KeyValuePut {
			c.apply(e)
		}
	}
	for _, k := range gone {
		c.mu.Lock()
		delete(c.entries, k)
		c.mu.Unlock()
		if c.onPut != nil {
			var zero T
			c.onPut(k, zero)
		}
	}
}

func (c *Cache[T]) apply(e jetstream.KeyValueEntry) {
	var zero T
	if c.opts.onEntry != nil {
		c.opts.onEntry(e)
	}
	switch e.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
		c.mu.Lock()
		delete(c.entries, e.Key())
		c.mu.Unlock()
		if c.onPut != nil {
			c.onPut(e.Key(), zero)
		}
		return
	}
	var v T
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		c.logger.Error("registry: undecodable entry", "bucket", c.bucket, "key", e.Key(), "err", err)
		return
	}
	c.mu.Lock()
	c.entries[e.Key()] = v
	c.mu.Unlock()
	if c.onPut != nil {
		c.onPut(e.Key(), v)
	}
}

// Ready is closed once the initial values have been loaded.
func (c *Cache[T]) Ready() <-chan struct{} { return c.ready }

// Bucket names the mirrored bucket.
func (c *Cache[T]) Bucket() string { return c.bucket }

// ErrStale: a cache cannot show it mirrors its bucket's current state.
var ErrStale = errors.New("registry: state may be stale")

// Fresh returns nil while the cache is known current, or an error wrapping
// ErrStale: its watch has ended (and not yet restarted and caught up), or
// the bucket reported a revision the watch has not delivered within the
// staleness bound.
func (c *Cache[T]) Fresh() error {
	if why := c.fresh.stale(c.opts.now()); why != "" {
		return fmt.Errorf("%w: %s: %s", ErrStale, c.bucket, why)
	}
	return nil
}

// Get returns the cached value of key.
func (c *Cache[T]) Get(key string) (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := c.entries[key]
	return v, ok
}

// Len returns how many entries are cached.
func (c *Cache[T]) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// stopWatch ends the current watch (tests: a watch the server dropped).
func (c *Cache[T]) stopWatch() {
	if w := c.fresh.watcher(); w != nil {
		_ = w.Stop()
	}
}
