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
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
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
	// A release names the revision of the engagement it releases and
	// carries the signatures of the security people who approved it
	// (release.go).
	Releases  uint64             `json:"releases,omitempty"`
	Approvals []roster.Signature `json:"approvals,omitempty"`
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

// Watcher answers "is this scope stopped?" from a watched mirror of the
// bucket. It decides on each switch's latest entry: an engagement stops;
// a release stops until it verifies (release.go), and again whenever it
// stops verifying (it is checked again every ReverifyEvery and whenever
// the switch changes); a delete or purge of a switch stops.
type Watcher struct {
	cache  *registry.Cache[Switch]
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	logger *slog.Logger

	mu     sync.RWMutex
	states map[string]*state
	proof  *Proof
	kick   chan struct{}
}

// state is the watcher's decision on one switch.
type state struct {
	engaged bool
	reason  string
	release jetstream.KeyValueEntry // a release value still (or again) to verify
	sw      Switch
}

// unverified is the reason a release stops until it is verified.
const unverified = "release not verified yet"

// ReverifyEvery is how often releases are verified again (the roster or
// its policy may have changed).
const ReverifyEvery = 15 * time.Second

// Watch starts mirroring the bucket until ctx ends and waits for the
// initial state, so a process never serves before it knows the switches.
func Watch(ctx context.Context, js jetstream.JetStream, t mesh.Topology, logger *slog.Logger) (*Watcher, error) {
	kv, err := Open(ctx, js, t)
	if err != nil {
		return nil, err
	}
	w := &Watcher{js: js, kv: kv, logger: logger, states: map[string]*state{}, kick: make(chan struct{}, 1)}
	c, err := registry.WatchBucket[Switch](ctx, kv, logger, nil, registry.WithEntryHook(w.observe))
	if err != nil {
		return nil, err
	}
	w.cache = c
	select {
	case <-c.Ready():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	go w.verifyLoop(ctx)
	return w, nil
}

// observe decides on a switch's new latest entry.
func (w *Watcher) observe(e jetstream.KeyValueEntry) {
	key := e.Key()
	if !IsSwitchKey(key) {
		return
	}
	st := &state{engaged: true}
	var sw Switch
	switch {
	case e.Operation() != jetstream.KeyValuePut:
		st.reason = "switch deleted outside a release (treated as engaged)"
	case json.Unmarshal(e.Value(), &sw) != nil:
		st.reason = "switch value unreadable (treated as engaged)"
	case sw.Engaged:
		st.reason, st.sw = sw.Reason, sw
	default:
		st.reason, st.sw, st.release = unverified, sw, e
	}
	w.set(key, st)
	if st.release != nil {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// set records st for key, logging and counting a change of decision.
func (w *Watcher) set(key string, st *state) {
	w.mu.Lock()
	old, had := w.states[key]
	w.states[key] = st
	w.mu.Unlock()
	metrics.KillSwitch(key, st.engaged)
	switch {
	case st.release != nil && st.reason == unverified:
		// A release on its way to verification: said once it is decided.
	case st.engaged && (!had || !old.engaged || old.reason != st.reason):
		w.logger.Warn("kill switch engaged", "scope", key, "reason", st.reason, "by", st.sw.By)
	case !st.engaged && (!had || old.engaged):
		w.logger.Warn("kill switch released", "scope", key, "by", st.sw.By)
	}
}

// verifyLoop verifies releases when they arrive and every ReverifyEvery.
func (w *Watcher) verifyLoop(ctx context.Context) {
	t := time.NewTicker(ReverifyEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-t.C:
		}
		w.verifyAll(ctx)
	}
}

func (w *Watcher) verifyAll(ctx context.Context) {
	w.mu.RLock()
	todo := map[string]*state{}
	for k, st := range w.states {
		if st.release != nil {
			todo[k] = st
		}
	}
	w.mu.RUnlock()
	for key, st := range todo {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := w.check(cctx, st)
		cancel()
		next := &state{engaged: err != nil, sw: st.sw, release: st.release}
		if err != nil {
			next.reason = "release refused: " + err.Error()
		}
		w.mu.Lock()
		cur := w.states[key]
		w.mu.Unlock()
		if cur != st && (cur == nil || cur.release == nil || cur.release.Revision() != st.release.Revision()) {
			continue // the switch changed meanwhile
		}
		if err != nil && (cur.engaged == false || cur.reason != next.reason) {
			w.logger.Error("kill switch release does not verify: the switch stays engaged", "scope", key, "err", err)
		}
		w.set(key, next)
	}
}

func (w *Watcher) check(ctx context.Context, st *state) error {
	w.mu.Lock()
	p := w.proof
	w.mu.Unlock()
	if p == nil {
		r, err := roster.Open(ctx, w.js)
		if err != nil {
			return fmt.Errorf("the roster is not available to verify it: %w", err)
		}
		p = &Proof{KV: w.kv, Roster: r}
		w.mu.Lock()
		w.proof = p
		w.mu.Unlock()
	}
	return p.Check(ctx, st.release, st.sw)
}

// ErrEngaged is wrapped by Check's errors.
var ErrEngaged = errors.New("killswitch: engaged")

// Fresh returns nil while the switches are known current, else an error
// wrapping registry.ErrStale: the watch ended or lags the bucket. Callers
// stop serving crypto (DependencyTimeout) while it is not nil.
func (w *Watcher) Fresh() error { return w.cache.Fresh() }

func (w *Watcher) get(key string) *state {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.states[key]
}

// Engaged reports whether scope/name (or everything) is stopped, and why.
// Switch state that may be stale counts as engaged: a released switch is
// never assumed.
func (w *Watcher) Engaged(scope, name string) (bool, string) {
	if err := w.cache.Fresh(); err != nil {
		return true, "kill switch state unknown: " + err.Error()
	}
	if st := w.get(ScopeAll); st != nil && st.engaged {
		return true, "all operations stopped: " + st.reason
	}
	if scope == ScopeAll {
		return false, ""
	}
	if st := w.get(Key(scope, name)); st != nil && st.engaged {
		return true, scope + " stopped: " + st.reason
	}
	return false, ""
}

// AllEngaged reports whether the global switch is engaged (or its state
// may be stale).
func (w *Watcher) AllEngaged() bool {
	if w.cache.Fresh() != nil {
		return true
	}
	st := w.get(ScopeAll)
	return st != nil && st.engaged
}
