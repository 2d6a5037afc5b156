package roster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// Changes of the roster itself
//
// Adding or removing a person and changing the quorum policy need the
// approval of OpPersonAdd/OpPersonRemove/OpQuorumSet's quorum of security
// people, once the roster holds that many (before, while a deployment is
// set up, nobody could approve). A security person asks (`sovkeys operator
// request add|remove|quorum`: a signed registry request to authn, which
// holds it like any other); others approve it; authn only records the
// decision. The holder of the trust seeds then runs the change (`operator
// add|remove`, `cluster init --operator` + `sovkeys init`, standalone's
// --quorum): the bootstrap identity finds the approved, unexpired,
// unexecuted request for exactly that change, re-verifies its signatures,
// marks it executed in the roster bucket (so it is used once) and writes.
// The seeds remain the root of trust (whoever holds them can mint any
// credential): the quorum makes a change by one person impossible without
// them and visible in the audit log.

// PeopleChange is one change of the roster or its policy.
type PeopleChange struct {
	Op     string // OpPersonAdd, OpPersonRemove or OpQuorumSet
	Name   string // the person (add, remove)
	Roles  string // add: roles joined with +
	Policy *Policy
}

// Write is the registry request a security person signs for c.
func (c PeopleChange) Write() kwadmin.RegistryWrite {
	w := kwadmin.RegistryWrite{Bucket: shared.BucketOperators, Mode: kwadmin.RegistryPut}
	switch c.Op {
	case OpPersonAdd:
		w.API, w.Key = "person.add", personKey(c.Name)
		w.Value, _ = json.Marshal(map[string]string{"name": c.Name, "roles": c.Roles})
	case OpPersonRemove:
		w.API, w.Key = "person.remove", personKey(c.Name)
		w.Value, _ = json.Marshal(map[string]string{"name": c.Name})
	case OpQuorumSet:
		w.API, w.Key = "quorum.set", quorumKey
		w.Value, _ = json.Marshal(c.Policy.Quorum) // map keys sorted: one rendering
	}
	w.Params = map[string]string{"change": c.String()}
	return w
}

func (c PeopleChange) String() string {
	switch c.Op {
	case OpPersonAdd:
		return "add " + c.Name + " (" + c.Roles + ")"
	case OpPersonRemove:
		return "remove " + c.Name
	}
	b, _ := json.Marshal(c.Policy.Quorum)
	return "quorum " + string(b)
}

// Gate decides whether a roster change may be written.
type Gate struct {
	Roster *Roster
	Admin  jetstream.KeyValue // the admin request bucket (read)
	Now    func() time.Time
}

func executedKey(id string) string { return "executed." + id }

// Approval returns the id of the approved request that allows c, "" when
// c needs none (quorum 1, or fewer security people on the roster than the
// quorum: a deployment being set up), or an error saying how to get one.
func (g *Gate) Approval(ctx context.Context, pol Policy, people []Person, c PeopleChange) (string, error) {
	need := pol.Need(c.Op)
	sec := 0
	for i := range people {
		if people[i].Has(natsauth.RoleSecurity) {
			sec++
		}
	}
	if need <= 1 || sec < need {
		return "", nil
	}
	if g.Admin == nil {
		return "", shared.NewError(shared.CodeAccessDenied, "%s needs the approval of %d security people, and the admin request bucket is not readable", c, need)
	}
	want := c.Write()
	list, err := Requests{KV: g.Admin}.List(ctx)
	if err != nil {
		return "", err
	}
	v := &Verifier{Roster: g.Roster, Admin: g.Admin, Now: g.Now}
	why := ""
	for i := range list {
		p := &list[i]
		var w kwadmin.RegistryWrite
		if p.Op != c.Op || p.State != StateApplied || json.Unmarshal(p.Body, &w) != nil || w.Key != want.Key || !bytes.Equal(w.Value, want.Value) {
			continue
		}
		if !g.Now().Before(p.Expires) {
			why = fmt.Sprintf("; request %s for it expired at %s", p.ID, p.Expires.UTC().Format(time.RFC3339))
			continue
		}
		if _, err := g.Roster.kv.Get(ctx, executedKey(p.ID)); err == nil {
			continue
		}
		if err := v.Recheck(ctx, p); err != nil {
			why = fmt.Sprintf("; request %s for it does not verify: %s", p.ID, shared.MessageOf(err))
			continue
		}
		return p.ID, nil
	}
	return "", shared.NewError(shared.CodeAccessDenied,
		"%s needs the approval of %d security people%s: one runs `sovkeys operator request %s`, another `sovkeys approve ID`; then run this again",
		c, need, why, c.requestArgs())
}

func (c PeopleChange) requestArgs() string {
	switch c.Op {
	case OpPersonAdd:
		return "add --name " + c.Name + " --roles " + c.Roles
	case OpPersonRemove:
		return "remove --name " + c.Name
	}
	args := "quorum"
	for op, n := range c.Policy.Quorum {
		args += fmt.Sprintf(" --set %s=%d", op, n)
	}
	return args
}

// MarkExecuted records that request id was applied (bootstrap): a request
// is used once.
func (g *Gate) MarkExecuted(ctx context.Context, id string) error {
	if id == "" {
		return nil
	}
	_, err := g.Roster.kv.Create(ctx, executedKey(id), []byte(g.Now().UTC().Format(time.RFC3339Nano)))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return shared.NewError(shared.CodeInvalidState, "request %s was already applied", id)
	}
	return err
}
