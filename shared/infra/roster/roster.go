// Package roster is the list of people who administer a deployment — each
// with a NATS user of their own, whose Ed25519 nkey also signs their admin
// requests, and roles (natsauth.Role) — and the quorum policy: how many
// different people must sign a destructive or trust-changing request.
//
// The roster lives in KV sovkeys_operators, which only the bootstrap
// identity may write (`sovkeys operator add|remove`, `cluster init
// --operator`); services read it to verify signed requests
// (signed.go) and to decide approvals (pending.go).
package roster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// ErrRoster is wrapped by this package's errors that are not request
// refusals (those are shared.Error with a stable code).
var ErrRoster = errors.New("roster: failed")

// Person is one entry of the roster.
type Person struct {
	Name      string          `json:"name"`
	PublicKey string          `json:"public_key"` // the user nkey of their NATS credential (U...)
	Roles     []natsauth.Role `json:"roles"`
	Added     time.Time       `json:"added"`
	AddedBy   string          `json:"added_by,omitempty"`
}

// Has reports whether p holds role r.
func (p *Person) Has(r natsauth.Role) bool { return slices.Contains(p.Roles, r) }

// RoleNames renders p's roles as admin+security.
func (p *Person) RoleNames() string {
	names := make([]string, len(p.Roles))
	for i, r := range p.Roles {
		names[i] = string(r)
	}
	return strings.Join(names, "+")
}

// Validate checks an entry before it is written or trusted.
func (p *Person) Validate() error {
	switch {
	case !shared.ValidPersonName(p.Name) || p.Name == natsauth.BootstrapPerson:
		return fmt.Errorf("%w: person name %q: 1-32 characters of [a-z0-9-], starting with a letter, not %q", shared.ErrConfigValidation, p.Name, natsauth.BootstrapPerson)
	case !nkeys.IsValidPublicUserKey(p.PublicKey):
		return fmt.Errorf("%w: person %s: %q is not a user public nkey", shared.ErrConfigValidation, p.Name, p.PublicKey)
	case len(p.Roles) == 0:
		return fmt.Errorf("%w: person %s has no role", shared.ErrConfigValidation, p.Name)
	}
	for _, r := range p.Roles {
		if !slices.Contains(natsauth.Roles(), r) {
			return fmt.Errorf("%w: person %s: unknown role %q", shared.ErrConfigValidation, p.Name, r)
		}
	}
	return nil
}

// personKey is the KV key of a person's entry.
func personKey(name string) string { return "person." + name }

// quorumKey is the KV key of the quorum policy.
const quorumKey = "quorum"

// Roster reads (and, with the bootstrap identity, writes) the roster.
type Roster struct{ kv jetstream.KeyValue }

// Open binds the roster bucket (declared by Bootstrap).
func Open(ctx context.Context, js jetstream.JetStream) (*Roster, error) {
	kv, err := mesh.BindKV(ctx, js, jetstream.KeyValueConfig{Bucket: shared.BucketOperators})
	if err != nil {
		return nil, err
	}
	return &Roster{kv: kv}, nil
}

// FromKV wraps an already bound roster bucket.
func FromKV(kv jetstream.KeyValue) *Roster { return &Roster{kv: kv} }

// Get returns person name, or a shared.Error with CodeAccessDenied when
// nobody of that name is on the roster.
func (r *Roster) Get(ctx context.Context, name string) (*Person, error) {
	if !shared.ValidPersonName(name) {
		return nil, shared.NewError(shared.CodeAccessDenied, "roster: %q is not a person's name", name)
	}
	e, err := r.kv.Get(ctx, personKey(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, shared.NewError(shared.CodeAccessDenied, "roster: %s is not on the roster", name)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	var p Person
	if err := json.Unmarshal(e.Value(), &p); err != nil || p.Validate() != nil || p.Name != name {
		return nil, shared.NewError(shared.CodeAccessDenied, "roster: the entry of %s is malformed", name)
	}
	return &p, nil
}

// List returns every person, by name.
func (r *Roster) List(ctx context.Context) ([]Person, error) {
	lister, err := r.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	var out []Person
	for k := range lister.Keys() {
		name, ok := strings.CutPrefix(k, "person.")
		if !ok {
			continue
		}
		p, err := r.Get(ctx, name)
		if err != nil {
			continue
		}
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Put writes p (bootstrap identity only).
func (r *Roster) Put(ctx context.Context, p Person) error {
	if err := p.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRoster, err)
	}
	if _, err := r.kv.Put(ctx, personKey(p.Name), b); err != nil {
		return fmt.Errorf("%w: %v", ErrRoster, err)
	}
	return nil
}

// Remove deletes person name's entry (bootstrap identity only): their
// signatures are refused from then on.
func (r *Roster) Remove(ctx context.Context, name string) error {
	if err := r.kv.Delete(ctx, personKey(name)); err != nil {
		return fmt.Errorf("%w: %v", ErrRoster, err)
	}
	return nil
}

// Policy says how many different people must sign each operation that
// needs a quorum; an operation not named needs one.
type Policy struct {
	Quorum map[string]int `json:"quorum"`
}

// Operations that wait for a quorum by default (docs/security.md,
// "Quorum"). The names are the Op of their signed requests.
const (
	OpKeyVersionDestroy = kwadmin.OpVersionDestroy
	// OpForcedRotation retires a key store's oldest live credential to
	// make room for a new one (KMS may still be using it).
	OpForcedRotation = "registry.keystore.rotate_credential.force"
	// OpTenantDelete and OpKeystoreDelete remove a tenant or an empty key store.
	OpTenantDelete   = "registry.tenant.delete"
	OpKeystoreDelete = "registry.keystore.delete"
	// OpKeyScheduleDeletion schedules an XKS key's destruction.
	OpKeyScheduleDeletion = "registry.key.schedule_deletion"
	// OpKillswitchRelease releases an engaged kill switch: the release value
	// carries the signatures of its security people, which every watcher
	// verifies (shared/infra/killswitch, release.go). Engage takes one.
	OpKillswitchRelease = "killswitch.release"
	// OpPersonAdd, OpPersonRemove and OpQuorumSet change who may sign and
	// how many must: security people request and approve them (through
	// authn, which only records the decision), and the holder of the
	// trust seeds applies them (people.go).
	OpPersonAdd    = "registry.person.add"
	OpPersonRemove = "registry.person.remove"
	OpQuorumSet    = "registry.quorum.set"
)

// DefaultQuorum is the quorum of every destructive or trust-changing
// operation when the roster holds no policy.
const DefaultQuorum = 2

// DefaultPolicy is the policy of a deployment whose roster has none.
func DefaultPolicy() Policy {
	return Policy{Quorum: map[string]int{OpKeyVersionDestroy: DefaultQuorum, OpForcedRotation: DefaultQuorum,
		OpTenantDelete: DefaultQuorum, OpKeystoreDelete: DefaultQuorum, OpKeyScheduleDeletion: DefaultQuorum,
		OpKillswitchRelease: DefaultQuorum, OpPersonAdd: DefaultQuorum, OpPersonRemove: DefaultQuorum, OpQuorumSet: DefaultQuorum}}
}

// UniformPolicy needs n signatures for every operation DefaultPolicy names
// (standalone's --quorum).
func UniformPolicy(n int) Policy {
	p := DefaultPolicy()
	for op := range p.Quorum {
		p.Quorum[op] = n
	}
	return p
}

// Need returns how many different people must sign op.
func (p Policy) Need(op string) int {
	if n, ok := p.Quorum[op]; ok && n > 0 {
		return n
	}
	return 1
}

// Policy returns the quorum policy (DefaultPolicy when none is written).
func (r *Roster) Policy(ctx context.Context) (Policy, error) {
	e, err := r.kv.Get(ctx, quorumKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return DefaultPolicy(), nil
	}
	if err != nil {
		return Policy{}, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	var p Policy
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		// A policy that does not parse must not lower any quorum.
		return DefaultPolicy(), nil
	}
	def := DefaultPolicy()
	for op, n := range def.Quorum {
		if _, ok := p.Quorum[op]; !ok {
			if p.Quorum == nil {
				p.Quorum = map[string]int{}
			}
			p.Quorum[op] = n
		}
	}
	return p, nil
}

// SetPolicy writes the quorum policy (bootstrap identity only).
func (r *Roster) SetPolicy(ctx context.Context, p Policy) error {
	for op, n := range p.Quorum {
		if n < 1 || n > 9 {
			return fmt.Errorf("%w: quorum of %s must be 1..9, not %d", shared.ErrConfigValidation, op, n)
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRoster, err)
	}
	if _, err := r.kv.Put(ctx, quorumKey, b); err != nil {
		return fmt.Errorf("%w: %v", ErrRoster, err)
	}
	return nil
}

// HeldAt checks that sig is a valid signature by a person who, at time at
// (a server-assigned timestamp, such as the revision that carries the
// signature), was on the roster with sig's key and role. The roster's
// history answers for people removed or changed since, so a signature
// given while its signer held the role stays valid after they leave;
// history older than the bucket keeps (5 entries a person) does not.
func (r *Roster) HeldAt(ctx context.Context, sig *Signature, role natsauth.Role, at time.Time) (*Person, error) {
	if !shared.ValidPersonName(sig.Person) {
		return nil, shared.NewError(shared.CodeAccessDenied, "roster: %q is not a person's name", sig.Person)
	}
	if err := sig.verifySig(); err != nil {
		return nil, err
	}
	hist, err := r.kv.History(ctx, personKey(sig.Person))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, shared.NewError(shared.CodeAccessDenied, "roster: %s was never on the roster", sig.Person)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	var then jetstream.KeyValueEntry
	for _, e := range hist {
		if !e.Created().After(at) {
			then = e
		}
	}
	if then == nil {
		return nil, shared.NewError(shared.CodeAccessDenied, "roster: the history of %s no longer reaches back to %s", sig.Person, at.UTC().Format(time.RFC3339))
	}
	var p Person
	switch {
	case then.Operation() != jetstream.KeyValuePut:
		return nil, shared.NewError(shared.CodeAccessDenied, "roster: %s was not on the roster at %s", sig.Person, at.UTC().Format(time.RFC3339))
	case json.Unmarshal(then.Value(), &p) != nil || p.Validate() != nil || p.Name != sig.Person:
		return nil, shared.NewError(shared.CodeAccessDenied, "roster: the entry of %s is malformed", sig.Person)
	case p.PublicKey != sig.Key:
		return nil, shared.NewError(shared.CodeAccessDenied, "signed by a key that was not %s's at %s", sig.Person, at.UTC().Format(time.RFC3339))
	case role != "" && !p.Has(role):
		return nil, shared.NewError(shared.CodeAccessDenied, "%s (roles %s) did not hold the %s role at %s", p.Name, p.RoleNames(), role, at.UTC().Format(time.RFC3339))
	}
	return &p, nil
}

// legacyReleasesKey holds the revision of the kill-switch bucket up to
// which releases written before releases were signed are honoured
// (written once, by bootstrap, at the first start of a build that signs
// them: a person cannot move it, the roster being bootstrap's alone).
const legacyReleasesKey = "migration.killswitch_releases"

// LegacyReleasesBefore returns that revision (0: none, or not recorded).
func (r *Roster) LegacyReleasesBefore(ctx context.Context) (uint64, error) {
	e, err := r.kv.Get(ctx, legacyReleasesKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	var m struct {
		Revision uint64 `json:"revision"`
	}
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return 0, nil
	}
	return m.Revision, nil
}

// RecordLegacyReleases writes LegacyReleasesBefore once (bootstrap): later
// calls leave the first value. It reports whether this call wrote it.
func (r *Roster) RecordLegacyReleases(ctx context.Context, rev uint64) (bool, error) {
	b, _ := json.Marshal(map[string]any{"revision": rev, "at": time.Now().UTC()})
	_, err := r.kv.Create(ctx, legacyReleasesKey, b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	return true, nil
}
