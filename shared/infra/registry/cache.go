package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// Cache mirrors a KV bucket in memory through a watch, so request paths read
// key stores and keys without a round trip. The bucket stays the source of
// truth: every process converges on it, and a change made anywhere in the
// cluster reaches every cache within the watch's delivery time.
type Cache[T any] struct {
	mu      sync.RWMutex
	entries map[string]T
	ready   chan struct{}
	logger  *slog.Logger
	onPut   func(key string, v T)
}

// WatchBucket starts mirroring kv until ctx ends. onPut (optional) is called
// for every update, e.g. to drop derived state such as unsealed secrets.
func WatchBucket[T any](ctx context.Context, kv jetstream.KeyValue, logger *slog.Logger, onPut func(key string, v T)) (*Cache[T], error) {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("registry: watch %s: %w", kv.Bucket(), err)
	}
	c := &Cache[T]{entries: map[string]T{}, ready: make(chan struct{}), logger: logger, onPut: onPut}
	go c.run(ctx, w, kv.Bucket())
	return c, nil
}

func (c *Cache[T]) run(ctx context.Context, w jetstream.KeyWatcher, bucket string) {
	defer func() { _ = w.Stop() }()
	readyClosed := false
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				if !readyClosed {
					close(c.ready)
					readyClosed = true
				}
				continue
			}
			c.apply(e, bucket)
		}
	}
}

func (c *Cache[T]) apply(e jetstream.KeyValueEntry, bucket string) {
	var zero T
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
		c.logger.Error("registry: undecodable entry", "bucket", bucket, "key", e.Key(), "err", err)
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
