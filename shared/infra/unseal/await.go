package unseal

// The sealed keyworker's side: publish an ephemeral key, open the shares
// encrypted to it, combine k of one split, check the PIN, and try C_Login
// only within the pool's failed-login budget.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// maxOpenSplits bounds the splits whose shares a sealed keyworker holds
// at once while waiting for k of one of them.
const maxOpenSplits = 16

// DefaultRepublish is how often a sealed keyworker refreshes its key record
// (the bucket's entries expire after an hour) and logs its fingerprint.
const DefaultRepublish = 10 * time.Minute

// Config is a sealed keyworker's unseal configuration.
type Config struct {
	Pool string
	// Threshold is the k the PIN was split with (the keyworker's
	// configuration, never the number a share claims: one share holder
	// claiming a lower k would make it combine too few shares).
	Threshold int
	// MaxFailedLogins bounds failed HSM logins per pool and LoginWindow,
	// shared by every keyworker of the pool (0: DefaultMaxFailedLogins).
	MaxFailedLogins int
	Logger          *slog.Logger
	Now             func() time.Time
	Republish       time.Duration // 0: DefaultRepublish
	// OnKey, when set, is called once the key record is published.
	OnKey func(KeyRecord)
}

func (c Config) withDefaults() Config {
	if c.MaxFailedLogins == 0 {
		c.MaxFailedLogins = DefaultMaxFailedLogins
	}
	if c.Republish == 0 {
		c.Republish = DefaultRepublish
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate checks the configuration.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case !shared.ValidPoolName(c.Pool):
		return fmt.Errorf("%w: pool %q", shared.ErrConfigValidation, c.Pool)
	case c.Threshold < 2 || c.Threshold > 255:
		return fmt.Errorf("%w: unseal threshold %d must be 2..255", shared.ErrConfigValidation, c.Threshold)
	case c.MaxFailedLogins < 1 || c.MaxFailedLogins > maxFailedLoginsLimit:
		return fmt.Errorf("%w: unseal max failed logins %d must be 1..%d", shared.ErrConfigValidation, c.MaxFailedLogins, maxFailedLoginsLimit)
	case c.Republish < time.Second || c.Republish >= LoginWindow:
		return fmt.Errorf("%w: unseal republish period must be in [1s, %s)", shared.ErrConfigValidation, LoginWindow)
	}
	return nil
}

// sealed is one waiting keyworker process.
type sealed struct {
	cfg    Config
	kv     jetstream.KeyValue
	key    *KeyPair
	budget *budget
	log    *slog.Logger
	locked *LockedError // last refusal by the budget, nil when not locked
	// groups holds opened shares by share set (v1: ""), then by index.
	groups map[string]map[byte]Share
}

// Await publishes this process's ephemeral key, waits for k shares of one
// split encrypted to it, and calls try with the PIN they rebuild. It
// returns nil once try succeeded. Shares are purged as they are read; a
// malformed share, one for another pool or keyworker, or a combination
// whose check value fails is refused without any login; a login is tried
// only within the pool's failed-login budget.
func Await(ctx context.Context, kv jetstream.KeyValue, cfg Config, try func(pin string) error) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	key, err := NewKeyPair(cfg.Pool)
	if err != nil {
		return err
	}
	s := &sealed{cfg: cfg, kv: kv, key: key, groups: map[string]map[byte]Share{},
		budget: &budget{kv: kv, pool: cfg.Pool, max: cfg.MaxFailedLogins, now: cfg.Now},
		log:    cfg.Logger.With("pool", cfg.Pool, "keyworker_id", key.ID, "key_fingerprint", key.FP)}
	w, err := kv.Watch(ctx, cfg.Pool+".>")
	if err != nil {
		return fmt.Errorf("unseal: watch: %w", err)
	}
	defer func() { _ = w.Stop() }()
	s.refreshLock(ctx)
	if err := s.publish(ctx); err != nil {
		return err
	}
	defer s.unpublish(ctx)
	if cfg.OnKey != nil {
		cfg.OnKey(key.Record(StateSealed, "", time.Time{}, cfg.Now()))
	}
	metrics.UnsealSealed(cfg.Pool, true)
	s.announce()
	tick := time.NewTicker(cfg.Republish)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			s.refreshLock(ctx)
			if err := s.publish(ctx); err != nil {
				s.log.Warn("could not refresh the keyworker's unseal key record", "err", err)
			}
			s.announce()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("unseal: watch closed")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if s.entry(ctx, e, try) {
				metrics.UnsealSealed(cfg.Pool, false)
				metrics.UnsealLocked(cfg.Pool, false)
				return nil
			}
		}
	}
}

// refreshLock reads the pool's budget: another keyworker may have spent
// it, or its oldest failure may have left the window.
func (s *sealed) refreshLock(ctx context.Context) {
	st, err := ReadLoginState(ctx, s.kv, s.cfg.Pool, s.cfg.Now)
	if err != nil {
		s.log.Warn("could not read the pool's failed-login budget", "err", err)
		return
	}
	if st.Failed >= s.cfg.MaxFailedLogins {
		s.locked = &LockedError{Pool: s.cfg.Pool, Failed: st.Failed, Max: s.cfg.MaxFailedLogins, Until: st.Until}
	} else {
		s.locked = nil
	}
	metrics.UnsealLocked(s.cfg.Pool, s.locked != nil)
}

// announce logs that the process is sealed and the key fingerprint to pin.
func (s *sealed) announce() {
	if s.locked != nil {
		s.log.Error("keyworker sealed and its pool LOCKED: the failed HSM login budget is spent; shares are refused until then",
			"failed_logins", s.locked.Failed, "max_failed_logins", s.locked.Max, "until", s.locked.Until.UTC().Format(time.RFC3339))
		return
	}
	s.log.Warn("keyworker sealed: waiting for HSM PIN shares encrypted to this keyworker's key (sovkeys unseal --keyworker-key KEY_FINGERPRINT --share ...)",
		"threshold", s.cfg.Threshold)
}

// publish writes the key record with the current state.
func (s *sealed) publish(ctx context.Context) error {
	state, detail, until := StateSealed, "waiting for "+strconv.Itoa(s.cfg.Threshold)+" shares", time.Time{}
	if s.locked != nil {
		state, detail, until = StateLocked, s.locked.Error(), s.locked.Until
	}
	val, err := json.Marshal(s.key.Record(state, detail, until, s.cfg.Now()))
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, shared.UnsealKeyKey(s.cfg.Pool, s.key.ID), val); err != nil {
		return fmt.Errorf("unseal: publish keyworker key: %w", err)
	}
	return nil
}

// unpublish removes the key record (the key dies with the process).
func (s *sealed) unpublish(ctx context.Context) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = s.kv.Purge(cctx, shared.UnsealKeyKey(s.cfg.Pool, s.key.ID))
}

// refuse logs and counts a share refused before any login, and purges it.
func (s *sealed) refuse(ctx context.Context, key, reason string, err error) {
	metrics.UnsealRefusedShare(s.cfg.Pool, reason)
	s.log.Warn("unseal share refused; no HSM login tried", "key", key, "reason", reason, "err", err)
	_ = s.kv.Purge(ctx, key)
}

// entry handles one bucket update; true once unsealed.
func (s *sealed) entry(ctx context.Context, e jetstream.KeyValueEntry, try func(string) error) bool {
	key := e.Key()
	rest := strings.TrimPrefix(key, s.cfg.Pool+".")
	if _, err := strconv.Atoi(rest); err == nil {
		// A share stored in clear by an older `sovkeys unseal`: purged
		// unread, so nothing readable stays in the bucket.
		s.refuse(ctx, key, "clear", errors.New("a share was stored in clear (an older sovkeys unseal); submit it again with this version"))
		return false
	}
	mine := strings.TrimSuffix(shared.UnsealShareKey(s.cfg.Pool, s.key.ID, 0), "0")
	if !strings.HasPrefix(key, mine) {
		return false // another process's share, a key record, the budget
	}
	var ss SealedShare
	if err := json.Unmarshal(e.Value(), &ss); err != nil || key != shared.UnsealShareKey(s.cfg.Pool, s.key.ID, ss.Index) {
		s.refuse(ctx, key, "malformed", fmt.Errorf("%w: not an encrypted share stored under its own index", ErrShare))
		return false
	}
	sh, err := s.key.Open(ss)
	_ = s.kv.Purge(ctx, key) // opened or refused, it is of no further use
	switch {
	case errors.Is(err, ErrNotForThisKeyworker):
		s.refuse(ctx, key, "not_for_this_keyworker", err)
		return false
	case errors.Is(err, ErrOtherPool):
		s.refuse(ctx, key, "other_pool", err)
		return false
	case err != nil:
		s.refuse(ctx, key, "malformed", err)
		return false
	case sh.Threshold != s.cfg.Threshold:
		s.refuse(ctx, key, "threshold", fmt.Errorf("%w: share made for threshold %d, this pool needs %d", ErrShare, sh.Threshold, s.cfg.Threshold))
		return false
	}
	g := s.groups[sh.Set]
	if g == nil {
		if len(s.groups) >= maxOpenSplits {
			// Shares of many splits and none complete: someone is feeding
			// the keyworker; start over rather than grow without bound.
			s.log.Warn("unseal shares of too many different splits; forgetting those held", "splits", len(s.groups))
			clear(s.groups)
		}
		g = map[byte]Share{}
		s.groups[sh.Set] = g
	}
	g[sh.Share.X] = sh
	s.log.Info("unseal share received", "share_index", sh.Share.X, "share_version", sh.Version, "have", len(g), "need", s.cfg.Threshold)
	if len(g) < s.cfg.Threshold {
		return false
	}
	delete(s.groups, sh.Set)
	parts := make([]Share, 0, len(g))
	for _, p := range g {
		parts = append(parts, p)
	}
	return s.attempt(ctx, parts, try)
}

// attempt combines a full group and, within the budget, logs in.
func (s *sealed) attempt(ctx context.Context, parts []Share, try func(string) error) bool {
	pin, err := Combine(parts)
	if err != nil {
		metrics.UnsealRefusedShare(s.cfg.Pool, "check")
		s.log.Error("unseal shares do not combine to the PIN (wrong, altered or mixed shares); no HSM login tried: submit the right shares", "err", err)
		return false
	}
	defer clear(pin)
	ref, err := s.budget.reserve(ctx, s.key.ID)
	if le := (*LockedError)(nil); errors.As(err, &le) {
		s.locked = le
		metrics.UnsealLocked(s.cfg.Pool, true)
		if perr := s.publish(ctx); perr != nil {
			s.log.Warn("could not publish the locked state", "err", perr)
		}
		s.announce()
		return false
	}
	if err != nil {
		s.log.Error("cannot count the HSM login in the pool's budget; no login tried", "err", err)
		return false
	}
	if s.locked != nil {
		s.locked = nil
		metrics.UnsealLocked(s.cfg.Pool, false)
		_ = s.publish(ctx)
	}
	if err := try(string(pin)); err != nil {
		metrics.UnsealFailedLogin(s.cfg.Pool)
		st, _ := ReadLoginState(ctx, s.kv, s.cfg.Pool, s.cfg.Now)
		s.log.Error("unseal failed: the HSM refused the combined PIN; submit the right shares",
			"failed_logins", st.Failed, "max_failed_logins", s.cfg.MaxFailedLogins, "window", LoginWindow.String(), "err", err)
		return false
	}
	if err := s.budget.release(ctx, ref); err != nil {
		s.log.Warn("could not remove a successful login from the pool's failed-login budget", "err", err)
	}
	s.log.Info("keyworker unsealed")
	return true
}
