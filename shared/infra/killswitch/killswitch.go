// Package killswitch is the customer's emergency stop: switches stored in
// JetStream KV, watched by every gateway, authn and keyworker, so an engage
// anywhere in the cluster stops the scoped crypto operations everywhere
// within the watch's delivery time (well under a second on a healthy cluster).
package killswitch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// Bucket is the KV bucket holding the switches.
const Bucket = shared.BucketKillSwitch

// Scopes of a switch.
const (
	ScopeAll      = "all"
	ScopeKeystore = "keystore"
	ScopeTenant   = "tenant"
)

// Switch is the state of one scope's kill switch.
type Switch struct {
	Engaged bool      `json:"engaged"`
	Reason  string    `json:"reason"`
	By      string    `json:"by"`
	At      time.Time `json:"at"`
}

// Key returns the KV key of a scope: "all", "keystore.<token>", "tenant.<token>".
func Key(scope, name string) string {
	if scope == ScopeAll {
		return ScopeAll
	}
	return scope + "." + shared.ScopeToken(name)
}

// Open declares (if needed) the bucket.
func Open(ctx context.Context, js jetstream.JetStream, t mesh.Topology) (jetstream.KeyValue, error) {
	return mesh.EnsureBucket(ctx, js, Bucket, "sovkeys: kill switches", t)
}

// Set writes a switch (engage or release). History keeps earlier states.
func Set(ctx context.Context, kv jetstream.KeyValue, scope, name string, sw Switch) error {
	data, err := json.Marshal(sw)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, Key(scope, name), data); err != nil {
		return fmt.Errorf("killswitch: set %s: %w", Key(scope, name), err)
	}
	return nil
}

// Watcher answers "is this scope stopped?" from a watched mirror of the bucket.
type Watcher struct {
	cache *registry.Cache[Switch]
}

// Watch starts mirroring the bucket until ctx ends and waits for the
// initial state, so a process never serves before it knows the switches.
func Watch(ctx context.Context, js jetstream.JetStream, t mesh.Topology, logger *slog.Logger) (*Watcher, error) {
	kv, err := Open(ctx, js, t)
	if err != nil {
		return nil, err
	}
	c, err := registry.WatchBucket[Switch](ctx, kv, logger, func(key string, sw Switch) {
		metrics.KillSwitch(key, sw.Engaged)
		if sw.Engaged {
			logger.Warn("kill switch engaged", "scope", key, "reason", sw.Reason, "by", sw.By)
		} else {
			logger.Warn("kill switch released", "scope", key, "by", sw.By)
		}
	})
	if err != nil {
		return nil, err
	}
	select {
	case <-c.Ready():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &Watcher{cache: c}, nil
}

// ErrEngaged is wrapped by Check's errors.
var ErrEngaged = errors.New("killswitch: engaged")

// Fresh returns nil while the switches are known current, else an error
// wrapping registry.ErrStale: the watch ended or lags the bucket. Callers
// stop serving crypto (DependencyTimeout) while it is not nil.
func (w *Watcher) Fresh() error { return w.cache.Fresh() }

// Engaged reports whether scope/name (or everything) is stopped, and why.
// Switch state that may be stale counts as engaged: a released switch is
// never assumed.
func (w *Watcher) Engaged(scope, name string) (bool, string) {
	if err := w.cache.Fresh(); err != nil {
		return true, "kill switch state unknown: " + err.Error()
	}
	if sw, ok := w.cache.Get(ScopeAll); ok && sw.Engaged {
		return true, "all operations stopped: " + sw.Reason
	}
	if scope == ScopeAll {
		return false, ""
	}
	if sw, ok := w.cache.Get(Key(scope, name)); ok && sw.Engaged {
		return true, scope + " stopped: " + sw.Reason
	}
	return false, ""
}

// AllEngaged reports whether the global switch is engaged (or its state
// may be stale).
func (w *Watcher) AllEngaged() bool {
	if w.cache.Fresh() != nil {
		return true
	}
	sw, ok := w.cache.Get(ScopeAll)
	return ok && sw.Engaged
}
