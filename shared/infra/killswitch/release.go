package killswitch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// Releases need a quorum (docs/security.md, "Quorum")
//
// Engaging a switch takes one security person: stopping must be fast.
// Releasing one takes as many security people as the roster's policy
// names for OpRelease (default 2). Every approver signs the same body: the
// switch's key and the revision of the engagement it releases (a revision
// the server assigns, so an approval cannot be kept for a later
// engagement). The approvals collect in a pending entry beside the switch
// (key "pending.<switch key>"); the one that completes the quorum writes
// the release value, carrying every signature, with a compare-and-set on
// that revision.
//
// The bucket is written by security people directly, so nothing stored
// there is taken on trust: every watcher (gateway, authn, keyworker)
// verifies a release value before it stops enforcing the switch — each
// signature against the roster as it was when the release was written, the
// released revision an engagement still in the switch's history with no
// engagement after it — and treats a release that does not verify, a
// delete or a purge of a switch as engaged.

// OpRelease is the signed operation of a release (roster policy key).
const OpRelease = roster.OpKillswitchRelease

// pendingPrefix starts the keys of releases waiting for approvals.
const pendingPrefix = "pending."

// IsSwitchKey reports whether key is a switch (not a pending release).
func IsSwitchKey(key string) bool { return !strings.HasPrefix(key, pendingPrefix) }

// PendingKey is the key of the pending release of switch key.
func PendingKey(key string) string { return pendingPrefix + key }

// ReleaseBody is what each approver of the release of engagement revision
// rev of switch key signs.
func ReleaseBody(key string, rev uint64) []byte {
	b, _ := json.Marshal(struct {
		Key      string `json:"key"`
		Releases uint64 `json:"releases"`
	}{key, rev})
	return b
}

// PendingRelease is a release waiting for its quorum.
type PendingRelease struct {
	ID        string             `json:"id"`
	Key       string             `json:"key"`
	Releases  uint64             `json:"releases"`
	Reason    string             `json:"reason,omitempty"`
	Need      int                `json:"need"`
	Approvals []roster.Signature `json:"approvals"`
	Created   time.Time          `json:"created"`
	Expires   time.Time          `json:"expires"`
	State     string             `json:"state"` // roster.State*
	DecidedBy string             `json:"decided_by,omitempty"`
}

// Signers lists who signed, in order.
func (p *PendingRelease) Signers() []string {
	out := make([]string, 0, len(p.Approvals))
	for _, s := range p.Approvals {
		out = append(out, s.Person)
	}
	return out
}

// StateAt is p's state at now.
func (p *PendingRelease) StateAt(now time.Time) string {
	if p.State == roster.StatePending && !now.Before(p.Expires) {
		return roster.StateExpired
	}
	return p.State
}

// engagedLike reports whether entry e stops its scope: an engaged value, a
// value that does not decode, a delete or a purge.
func engagedLike(e jetstream.KeyValueEntry) bool {
	if e.Operation() != jetstream.KeyValuePut {
		return true
	}
	var sw Switch
	return json.Unmarshal(e.Value(), &sw) != nil || sw.Engaged
}

// Proof verifies release values.
type Proof struct {
	KV     jetstream.KeyValue // the switches
	Roster *roster.Roster
}

// Check returns nil when entry e, a release value sw, releases its switch:
// signed by enough security people (policy at check time) who held the
// role when e was written, for the revision of the switch's last
// engagement. A release written before releases were signed (up to the
// revision bootstrap recorded at the upgrade) counts as it did then.
func (p *Proof) Check(ctx context.Context, e jetstream.KeyValueEntry, sw Switch) error {
	if sw.Engaged {
		return errors.New("not a release")
	}
	if sw.Releases == 0 && len(sw.Approvals) == 0 {
		legacy, err := p.Roster.LegacyReleasesBefore(ctx)
		if err != nil {
			return err
		}
		if e.Revision() <= legacy {
			return nil
		}
		return errors.New("release carries no approvals (written with a single credential, not `sovkeys killswitch release`)")
	}
	if sw.Releases >= e.Revision() {
		return fmt.Errorf("release names revision %d, not an earlier one", sw.Releases)
	}
	hist, err := p.KV.History(ctx, e.Key())
	if err != nil {
		return fmt.Errorf("switch history: %w", err)
	}
	found := false
	for _, h := range hist {
		switch r := h.Revision(); {
		case r == sw.Releases:
			if !engagedLike(h) {
				return fmt.Errorf("revision %d it releases is not an engagement", r)
			}
			found = true
		case r > sw.Releases && r < e.Revision() && engagedLike(h):
			return fmt.Errorf("engaged again at revision %d, after the engagement (revision %d) this release approves", r, sw.Releases)
		}
	}
	if !found {
		return fmt.Errorf("the engagement it releases (revision %d) is no longer in the switch's history", sw.Releases)
	}
	pol, err := p.Roster.Policy(ctx)
	if err != nil {
		return err
	}
	need := pol.Need(OpRelease)
	digest := roster.Digest(ReleaseBody(e.Key(), sw.Releases))
	seen := map[string]bool{}
	for i := range sw.Approvals {
		s := &sw.Approvals[i]
		if s.Op != OpRelease || s.Digest != digest {
			return fmt.Errorf("the approval of %s is not for this release", s.Person)
		}
		if _, err := p.Roster.HeldAt(ctx, s, natsauth.RoleSecurity, e.Created()); err != nil {
			return fmt.Errorf("the approval of %s: %s", s.Person, shared.MessageOf(err))
		}
		seen[s.Person] = true
	}
	if len(seen) < need {
		return fmt.Errorf("%d of the %d security approvals a release needs", len(seen), need)
	}
	return nil
}

// Pendings lists the releases waiting for (or decided by) their quorum,
// newest first.
func Pendings(ctx context.Context, kv jetstream.KeyValue) ([]PendingRelease, error) {
	lister, err := kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []PendingRelease
	for k := range lister.Keys() {
		if IsSwitchKey(k) {
			continue
		}
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var p PendingRelease
		if json.Unmarshal(e.Value(), &p) == nil {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

// Releaser is one security person releasing a switch.
type Releaser struct {
	KV     jetstream.KeyValue
	Roster *roster.Roster
	Signer *roster.Signer
	Now    func() time.Time
}

// ReleaseResult says what a Release call did.
type ReleaseResult struct {
	Released bool
	// WasReleased: the switch was not engaged; nothing was signed.
	WasReleased bool
	Pending     *PendingRelease
}

// Release signs the release of switch key (its current engagement) and
// adds the signature to the pending release; the signature that completes
// the quorum writes the release. Signing twice, releasing a switch that is
// not engaged, or a pending release for an earlier engagement are refused
// or restarted as the state requires.
func (r *Releaser) Release(ctx context.Context, key, reason string) (ReleaseResult, error) {
	if me, err := r.Roster.Get(ctx, r.Signer.Person); err != nil {
		return ReleaseResult{}, err
	} else if !me.Has(natsauth.RoleSecurity) {
		return ReleaseResult{}, shared.NewError(shared.CodeAccessDenied, "%s (roles %s) may not release a kill switch: it needs the security role", me.Name, me.RoleNames())
	}
	// The latest entry, a delete marker included (a deleted switch stops).
	hist, err := r.KV.History(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ReleaseResult{}, shared.NewError(shared.CodeValidation, "kill switch %s was never engaged", key)
	}
	if err != nil {
		return ReleaseResult{}, err
	}
	cur := hist[len(hist)-1]
	if !engagedLike(cur) {
		return ReleaseResult{WasReleased: true}, nil
	}
	pol, err := r.Roster.Policy(ctx)
	if err != nil {
		return ReleaseResult{}, err
	}
	need := pol.Need(OpRelease)
	sig, err := r.Signer.Sign(OpRelease, ReleaseBody(key, cur.Revision()))
	if err != nil {
		return ReleaseResult{}, err
	}
	now := r.Now()
	var p PendingRelease
	var prev uint64
	pe, err := r.KV.Get(ctx, PendingKey(key))
	switch {
	case err == nil:
		prev = pe.Revision()
		if json.Unmarshal(pe.Value(), &p) != nil {
			p = PendingRelease{}
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return ReleaseResult{}, err
	}
	if p.Releases != cur.Revision() || p.StateAt(now) != roster.StatePending {
		p = PendingRelease{ID: "ks-" + roster.NewID(), Key: key, Releases: cur.Revision(), Reason: reason,
			Created: now, Expires: now.Add(24 * time.Hour), State: roster.StatePending}
	}
	for _, s := range p.Approvals {
		if s.Person == sig.Person {
			return ReleaseResult{Pending: &p}, shared.NewError(shared.CodeInvalidState,
				"%s already approved releasing %s: another security person must", sig.Person, key)
		}
	}
	p.Need = need
	p.Approvals = append(p.Approvals, *sig)
	complete := len(p.Approvals) >= need
	if complete {
		p.State, p.DecidedBy = roster.StateApplied, sig.Person
	}
	if err := r.putPending(ctx, &p, prev); err != nil {
		return ReleaseResult{}, err
	}
	if !complete {
		return ReleaseResult{Pending: &p}, nil
	}
	sw := Switch{Engaged: false, Reason: p.Reason, By: strings.Join(p.Signers(), ","), At: now.UTC(),
		Releases: p.Releases, Approvals: p.Approvals}
	data, err := json.Marshal(sw)
	if err != nil {
		return ReleaseResult{}, err
	}
	if _, err := r.KV.Update(ctx, key, data, cur.Revision()); err != nil {
		return ReleaseResult{}, shared.NewError(shared.CodeInvalidState,
			"kill switch %s changed while its release was approved (engaged again?): nothing released; release again: %v", key, err)
	}
	return ReleaseResult{Released: true, Pending: &p}, nil
}

// Reject ends the pending release of key (any security person).
func (r *Releaser) Reject(ctx context.Context, id string) (*PendingRelease, error) {
	list, err := Pendings(ctx, r.KV)
	if err != nil {
		return nil, err
	}
	for _, p := range list {
		if p.ID != id {
			continue
		}
		if st := p.StateAt(r.Now()); st != roster.StatePending {
			return nil, shared.NewError(shared.CodeInvalidState, "request %s is %s", id, st)
		}
		e, err := r.KV.Get(ctx, PendingKey(p.Key))
		if err != nil {
			return nil, err
		}
		p.State, p.DecidedBy = roster.StateRejected, r.Signer.Person
		if err := r.putPending(ctx, &p, e.Revision()); err != nil {
			return nil, err
		}
		return &p, nil
	}
	return nil, shared.NewError(shared.CodeKeyNotFound, "no kill switch release %s", id)
}

// FindPending returns the pending release id.
func FindPending(ctx context.Context, kv jetstream.KeyValue, id string) (*PendingRelease, error) {
	list, err := Pendings(ctx, kv)
	if err != nil {
		return nil, err
	}
	for _, p := range list {
		if p.ID == id {
			return &p, nil
		}
	}
	return nil, shared.NewError(shared.CodeKeyNotFound, "no kill switch release %s", id)
}

func (r *Releaser) putPending(ctx context.Context, p *PendingRelease, prev uint64) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if prev == 0 {
		_, err = r.KV.Create(ctx, PendingKey(p.Key), b)
	} else {
		_, err = r.KV.Update(ctx, PendingKey(p.Key), b, prev)
	}
	if err != nil {
		return shared.NewError(shared.CodeInvalidState, "the release of %s changed meanwhile; run the command again: %v", p.Key, err)
	}
	return nil
}
