package roster

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// Requests waiting for a quorum
//
// A request whose operation needs more than one person (Policy.Need) is not
// applied when it arrives: the service that would apply it stores it, with
// its requester's signature, in KV sovkeys_admin under req.<id>, audits it,
// and answers with the id. Other people with the same role approve it with
// a signed request.approve naming the id and the digest of its parameters
// (so they approve what they saw); the requester cannot, nobody approves
// twice, and an expired or decided request takes no more decisions. When
// the approvals reach the quorum, the service re-verifies every signature
// against the roster as it is then, and applies the request. Anyone of the
// role may reject it; the requester may withdraw it the same way.

// Pending states.
const (
	StatePending  = "pending"
	StateApplied  = "applied"
	StateFailed   = "failed"
	StateRejected = "rejected"
	StateExpired  = "expired"
)

// Pending is a request waiting for (or decided by) its quorum.
type Pending struct {
	ID string `json:"id"`
	Op string `json:"op"`
	// Service decides and applies it: "keyworker" (with Pool) or "authn".
	Service string          `json:"service"`
	Pool    string          `json:"pool,omitempty"`
	Scope   string          `json:"scope,omitempty"` // audit scope (key store prefix)
	Summary string          `json:"summary"`
	Body    json.RawMessage `json:"body"` // the request's parameters, as signed
	Role    natsauth.Role   `json:"role"`
	Need    int             `json:"need"`
	// Request is the requester's signature; Approvals the approvers'
	// signed decisions.
	Request   Signature  `json:"request"`
	Approvals []Decision `json:"approvals,omitempty"`
	Created   time.Time  `json:"created"`
	Expires   time.Time  `json:"expires"`
	State     string     `json:"state"`
	DecidedBy string     `json:"decided_by,omitempty"`
	Reason    string     `json:"reason,omitempty"`
	Result    string     `json:"result,omitempty"`
}

// Decision is a signed approval: the signature and the body it covers.
type Decision struct {
	Sig  Signature       `json:"sig"`
	Body json.RawMessage `json:"body"`
}

// Requester is the person who asked.
func (p *Pending) Requester() string { return p.Request.Person }

// Approvers lists who approved, in order.
func (p *Pending) Approvers() []string {
	out := make([]string, 0, len(p.Approvals))
	for _, a := range p.Approvals {
		out = append(out, a.Sig.Person)
	}
	return out
}

// Signers is the requester and the approvers.
func (p *Pending) Signers() []string { return append([]string{p.Requester()}, p.Approvers()...) }

// Complete reports whether enough different people signed.
func (p *Pending) Complete() bool { return len(p.Signers()) >= p.Need }

// StateAt is p's state at now (a pending request past its expiry is expired).
func (p *Pending) StateAt(now time.Time) string {
	if p.State == StatePending && !now.Before(p.Expires) {
		return StateExpired
	}
	return p.State
}

func pendingKey(id string) string { return "req." + id }

// NewID makes a request id: short enough to type, random enough to guess.
func NewID() string { return strings.ToLower(rand.Text()[:16]) }

// Requests stores pending requests in KV sovkeys_admin.
type Requests struct{ KV jetstream.KeyValue }

// Create stores a new pending request.
func (r Requests) Create(ctx context.Context, p *Pending) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRoster, err)
	}
	if _, err := r.KV.Create(ctx, pendingKey(p.ID), b); err != nil {
		return fmt.Errorf("%w: store request %s: %v", ErrRoster, p.ID, err)
	}
	return nil
}

// Get returns request id and its revision.
func (r Requests) Get(ctx context.Context, id string) (*Pending, uint64, error) {
	if id == "" || len(id) > 32 || strings.ContainsAny(id, ".*> ") {
		return nil, 0, shared.NewError(shared.CodeValidation, "%q is not a request id", id)
	}
	e, err := r.KV.Get(ctx, pendingKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, shared.NewError(shared.CodeKeyNotFound, "no request %s (expired requests are kept for a day)", id)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	var p Pending
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		return nil, 0, fmt.Errorf("%w: request %s is unreadable: %v", ErrRoster, id, err)
	}
	return &p, e.Revision(), nil
}

// Update replaces request p read at revision rev (compare-and-set: two
// approvals at once cannot both count on the same state).
func (r Requests) Update(ctx context.Context, p *Pending, rev uint64) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRoster, err)
	}
	if _, err := r.KV.Update(ctx, pendingKey(p.ID), b, rev); err != nil {
		return shared.NewError(shared.CodeInvalidState, "request %s changed meanwhile; decide again", p.ID)
	}
	return nil
}

// List returns every stored request, newest first.
func (r Requests) List(ctx context.Context) ([]Pending, error) {
	lister, err := r.KV.ListKeys(ctx, jetstream.MetaOnly())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRoster, err)
	}
	var out []Pending
	for k := range lister.Keys() {
		id, ok := strings.CutPrefix(k, "req.")
		if !ok {
			continue
		}
		if p, _, err := r.Get(ctx, id); err == nil {
			out = append(out, *p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

// DecisionBody is the signed body of an approval or rejection of p.
func DecisionBody(p *Pending, reason string) ([]byte, error) {
	return json.Marshal(kwadmin.DecideRequest{ID: p.ID, Digest: Digest(p.Body), Reason: reason})
}

// CheckDecision verifies a decision (op kwadmin.OpApprove or OpReject) of
// p by sig over body, at now: a person of p's role, not the requester when
// approving, not twice, on a request still pending, for the parameters p
// holds. It returns the deciding person.
func (v *Verifier) CheckDecision(ctx context.Context, p *Pending, op string, body []byte, sig *Signature) (*Person, error) {
	var d kwadmin.DecideRequest
	if err := json.Unmarshal(body, &d); err != nil || d.ID != p.ID {
		return nil, shared.NewError(shared.CodeValidation, "malformed decision of request %s", p.ID)
	}
	if d.Digest != Digest(p.Body) {
		return nil, shared.NewError(shared.CodeAccessDenied, "request %s is not what was approved (its parameters differ)", p.ID)
	}
	requester := op == kwadmin.OpReject && sig.Person == p.Requester()
	role := p.Role
	if requester {
		role = "" // the requester may withdraw what they asked
	}
	person, err := v.Verify(ctx, op, body, sig, role)
	if err != nil {
		return nil, err
	}
	switch st := p.StateAt(v.Now()); {
	case st != StatePending:
		return nil, shared.NewError(shared.CodeInvalidState, "request %s is %s", p.ID, st)
	case op == kwadmin.OpApprove && person.Name == p.Requester():
		return nil, shared.NewError(shared.CodeAccessDenied, "%s asked for request %s and cannot approve it: another person must", person.Name, p.ID)
	case op == kwadmin.OpApprove && slices.Contains(p.Approvers(), person.Name):
		return nil, shared.NewError(shared.CodeInvalidState, "%s already approved request %s", person.Name, p.ID)
	}
	return person, nil
}

// Recheck verifies, before p is applied, that every signature on it still
// holds: each signer on the roster with that key and p's role, the
// requester's signature over p's parameters, each approval over its
// decision, all different people, at least Need of them.
func (v *Verifier) Recheck(ctx context.Context, p *Pending) error {
	seen := map[string]bool{}
	check := func(sig Signature, op string, body []byte) error {
		if sig.Op != op || sig.Digest != Digest(body) {
			return shared.NewError(shared.CodeAccessDenied, "request %s: a signature of %s is not for it", p.ID, sig.Person)
		}
		if err := sig.verifySig(); err != nil {
			return err
		}
		person, err := v.Roster.Get(ctx, sig.Person)
		if err != nil {
			return err
		}
		if person.PublicKey != sig.Key || !person.Has(p.Role) {
			return shared.NewError(shared.CodeAccessDenied, "request %s: %s no longer holds the %s role with that key", p.ID, sig.Person, p.Role)
		}
		if seen[sig.Person] {
			return shared.NewError(shared.CodeAccessDenied, "request %s: %s signed twice", p.ID, sig.Person)
		}
		seen[sig.Person] = true
		return nil
	}
	if err := check(p.Request, p.Op, p.Body); err != nil {
		return err
	}
	for _, a := range p.Approvals {
		var d kwadmin.DecideRequest
		if err := json.Unmarshal(a.Body, &d); err != nil || d.ID != p.ID || d.Digest != Digest(p.Body) {
			return shared.NewError(shared.CodeAccessDenied, "request %s: the approval of %s is for another request", p.ID, a.Sig.Person)
		}
		if err := check(a.Sig, kwadmin.OpApprove, a.Body); err != nil {
			return err
		}
	}
	if len(seen) < p.Need {
		return shared.NewError(shared.CodeAccessDenied, "request %s has %d of the %d signatures it needs", p.ID, len(seen), p.Need)
	}
	return nil
}

// Where held requests are decided (Pending.Service).
const (
	PlaceKeyworker = "keyworker"
	PlaceAuthn     = "authn"
)
