package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/clusterinit"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// Requests to change the roster or its quorum (roster/people.go): a
// security person asks, others approve (`sovkeys approve ID`), the holder
// of the trust seeds applies the approved change with `operator
// add|remove` (or cluster init + `sovkeys init`, or standalone --quorum).

// peopleReqFlags are the flags of `operator request add|remove|quorum`.
type peopleReqFlags struct {
	name, roles string
	set         multiFlag
}

func peopleRequestCommands() []command {
	req := func(verb, usage, short string, change func(ctx context.Context, o *operator, f *peopleReqFlags) (roster.PeopleChange, error)) command {
		return operatorCommand("operator request "+verb, usage, short, func(f *peopleReqFlags, fs *flag.FlagSet) {
			fs.StringVar(&f.name, "name", "", "the person")
			if verb == "add" {
				fs.StringVar(&f.roles, "roles", "", "roles, joined with +: admin, security, custodian, auditor")
			}
			if verb == "quorum" {
				fs.Var(&f.set, "set", "OP=N: how many people operation OP needs (repeatable; see `operator list`)")
			}
		}, func(ctx context.Context, o *operator, f *peopleReqFlags) error {
			c, err := change(ctx, o, f)
			if err != nil {
				return err
			}
			return o.requestPeopleChange(ctx, c)
		})
	}
	return []command{
		req("add", "--name NAME --roles ROLE[+ROLE]", "ask to add a person (security; approved by others of the role, then applied with `operator add`)",
			func(_ context.Context, _ *operator, f *peopleReqFlags) (roster.PeopleChange, error) {
				spec, err := clusterinit.ParsePersonSpec(f.name + ":" + f.roles)
				if err != nil {
					return roster.PeopleChange{}, err
				}
				names := make([]string, len(spec.Roles))
				for i, r := range spec.Roles {
					names[i] = string(r)
				}
				return roster.PeopleChange{Op: roster.OpPersonAdd, Name: spec.Name, Roles: strings.Join(names, "+")}, nil
			}),
		req("remove", "--name NAME", "ask to remove a person (security; approved by others, then applied with `operator remove`)",
			func(_ context.Context, _ *operator, f *peopleReqFlags) (roster.PeopleChange, error) {
				if !shared.ValidPersonName(f.name) {
					return roster.PeopleChange{}, fmt.Errorf("%w: --name %q", shared.ErrConfigValidation, f.name)
				}
				return roster.PeopleChange{Op: roster.OpPersonRemove, Name: f.name}, nil
			}),
		req("quorum", "--set OP=N [--set ...]", "ask to change the quorum policy (security; applied by bootstrap: standalone --quorum)",
			func(ctx context.Context, o *operator, f *peopleReqFlags) (roster.PeopleChange, error) {
				r, err := roster.Open(ctx, o.js)
				if err != nil {
					return roster.PeopleChange{}, err
				}
				pol, err := r.Policy(ctx)
				if err != nil {
					return roster.PeopleChange{}, err
				}
				if len(f.set) == 0 {
					return roster.PeopleChange{}, fmt.Errorf("give --set OP=N: %w", errUsage)
				}
				for _, kv := range f.set {
					op, v, ok := strings.Cut(kv, "=")
					n, err := strconv.Atoi(v)
					if !ok || err != nil || n < 1 || n > 9 {
						return roster.PeopleChange{}, fmt.Errorf("%w: --set %q: want OP=N with N in 1..9", shared.ErrConfigValidation, kv)
					}
					pol.Quorum[op] = n
				}
				return roster.PeopleChange{Op: roster.OpQuorumSet, Policy: &pol}, nil
			}),
	}
}

// requestPeopleChange sends c, signed, to authn, which holds it for
// approval.
func (o *operator) requestPeopleChange(ctx context.Context, c roster.PeopleChange) error {
	signer, err := o.person()
	if err != nil {
		return err
	}
	w := c.Write()
	return o.audited(ctx, "request."+w.API, map[string]string{"change": c.String()}, func() error {
		var resp kwadmin.RegistryWriteResponse
		if err := kwadmin.CallAuthn(kwadmin.WithSigner(ctx, signer), o.nc, kwadmin.EndpointRegistry, w, &resp); err != nil {
			return err
		}
		if resp.Pending != "" {
			return &roster.PendingError{ID: resp.Pending, Need: resp.Need, Signers: resp.Signers}
		}
		return o.print(map[string]string{"change": c.String(), "note": "this change needs no approval (quorum 1): apply it with the trust seeds"})
	})
}

// checkPeopleChange refuses, before any file changes, a roster change the
// mesh's quorum does not allow (no approved request for it). Without the
// mesh it says nothing: publishing checks again.
func checkPeopleChange(ctx context.Context, conn connFlags, dir string, c roster.PeopleChange, s stdio) error {
	conn.creds = filepath.Join(dir, "trust", shared.UserBootstrap+".creds")
	ctx, cancel := context.WithTimeout(ctx, operatorTimeout)
	defer cancel()
	nc, js, err := connectCLI(ctx, conn, s.stderr)
	if err != nil {
		return nil
	}
	defer nc.Close()
	r, err := roster.Open(ctx, js)
	if err != nil {
		return nil
	}
	have, err := r.List(ctx)
	if err != nil {
		return err
	}
	pol, err := r.Policy(ctx)
	if err != nil {
		return err
	}
	gate := &roster.Gate{Roster: r, Now: time.Now}
	if kv, err := js.KeyValue(ctx, shared.BucketAdmin); err == nil {
		gate.Admin = kv
	}
	_, err = gate.Approval(ctx, pol, have, c)
	return err
}
