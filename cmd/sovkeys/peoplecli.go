package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/clusterinit"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// People and quorum (docs/security.md, "Roles" and "Quorum"): `operator
// add|remove` issue or revoke a person's credential with the trust seeds
// of DIR and publish the roster with the bootstrap identity kept there;
// `operator list` and `request list` read; `approve` and `reject` send a
// person's signed decision to the service holding the request (authn for
// registry changes, the keyworkers of its pool for HSM changes).

// personFlags are the flags of `operator add|remove`.
type personFlags struct {
	conn      connFlags
	dir, name string
	roles     string
}

func peopleCommands() []command {
	return []command{
		define("operator add", "--dir DIR --name NAME --roles ROLE[+ROLE]",
			"issue a person's own credential (DIR/operators/NAME.creds) with roles admin, security, custodian, auditor, and publish the roster",
			groupOperator, registerPerson(true), runOperatorAdd),
		define("operator remove", "--dir DIR --name NAME",
			"remove a person: their credential is revoked and their signatures refused", groupOperator, registerPerson(false), runOperatorRemove),
		operatorCommand("operator list", "", "list the people of the roster and the quorum policy", none,
			func(ctx context.Context, o *operator, _ *struct{}) error { return o.listPeople(ctx) }),
		operatorCommand("request list", "", "list admin requests waiting for approval (and recently decided ones)", none,
			func(ctx context.Context, o *operator, _ *struct{}) error { return o.listRequests(ctx) }),
		withPositional("id", operatorCommand("approve", "ID", "approve another person's request (the approval that completes its quorum applies it)",
			decideFlags, func(ctx context.Context, o *operator, f *decision) error {
				return o.decide(ctx, kwadmin.EndpointApprove, f)
			})),
		withPositional("id", operatorCommand("reject", "ID [--reason TEXT]", "reject a request (its requester may withdraw it the same way)",
			decideFlags, func(ctx context.Context, o *operator, f *decision) error {
				return o.decide(ctx, kwadmin.EndpointReject, f)
			})),
	}
}

// rolesOf renders a spec's roles as the roster does (admin+security).
func rolesOf(spec clusterinit.PersonSpec) string {
	p := roster.Person{Roles: spec.Roles}
	return p.RoleNames()
}

// withPositional lets the command take its first argument as --flag.
func withPositional(flagName string, c command) command {
	c.positional = flagName
	return c
}

func registerPerson(add bool) func(fs *flag.FlagSet, getenv func(string) string, f *personFlags) {
	return func(fs *flag.FlagSet, getenv func(string) string, f *personFlags) {
		f.conn.register(fs, getenv)
		fs.StringVar(&f.dir, "dir", "", "the deployment's directory: `cluster init --out` DIR, or standalone's --data DIR (holds trust/ and the bootstrap identity)")
		fs.StringVar(&f.name, "name", "", "the person's name: 1-32 characters of [a-z0-9-], starting with a letter")
		if add {
			fs.StringVar(&f.roles, "roles", "", "roles, joined with +: admin, security, custodian, auditor")
		}
	}
}

// personDir checks DIR and returns its trust.
func (f *personFlags) personDir() (string, *natsauth.Trust, error) {
	if f.dir == "" || f.name == "" {
		return "", nil, fmt.Errorf("--dir and --name are required: %w", errUsage)
	}
	dir, err := filepath.Abs(f.dir)
	if err != nil {
		return "", nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "trust", "account.nk")); err != nil {
		return "", nil, fmt.Errorf("%w: %s holds no deployment trust (trust/account.nk)", shared.ErrConfigValidation, dir)
	}
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	return dir, trust, err
}

func runOperatorAdd(ctx context.Context, f *personFlags, s stdio) error {
	spec, err := clusterinit.ParsePersonSpec(f.name + ":" + f.roles)
	if err != nil {
		return err
	}
	dir, trust, err := f.personDir()
	if err != nil {
		return err
	}
	if err := checkPeopleChange(ctx, f.conn, dir, roster.PeopleChange{Op: roster.OpPersonAdd, Name: spec.Name, Roles: rolesOf(spec)}, s); err != nil {
		return err
	}
	if err := changePeople(trust, dir, []clusterinit.PersonSpec{spec}, nil); err != nil {
		return err
	}
	fmt.Fprintf(s.stdout, "person %s (%s): credential %s (give it to them only)\n", spec.Name, rolesOf(spec), clusterinit.PersonCredsFile(dir, spec.Name))
	return publishRosterFrom(ctx, f.conn, dir, nil, s)
}

func runOperatorRemove(ctx context.Context, f *personFlags, s stdio) error {
	dir, trust, err := f.personDir()
	if err != nil {
		return err
	}
	if err := checkPeopleChange(ctx, f.conn, dir, roster.PeopleChange{Op: roster.OpPersonRemove, Name: f.name}, s); err != nil {
		return err
	}
	if err := changePeople(trust, dir, nil, []string{f.name}); err != nil {
		return err
	}
	fmt.Fprintf(s.stdout, "person %s removed: their signatures are refused now; their NATS credential is revoked in the account (standalone: at its next start; a cluster: once the nodes reload the configs in %s/nats)\n", f.name, dir)
	return publishRosterFrom(ctx, f.conn, dir, nil, s)
}

// changePeople adds and removes people of the deployment in dir: through
// cluster init when dir is a cluster's (its state stays whole), else (a
// standalone data dir) directly.
func changePeople(trust *natsauth.Trust, dir string, add []clusterinit.PersonSpec, remove []string) error {
	if _, err := os.Stat(filepath.Join(dir, clusterinit.StateFile)); err == nil {
		_, err := clusterinit.Init(clusterinit.Config{Dir: dir, Operators: add, RemoveOperators: remove})
		return err
	}
	path := filepath.Join(dir, "trust", clusterinit.RosterFile)
	entries, err := clusterinit.ReadRoster(path)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, name := range remove {
		found := false
		for i, e := range entries {
			if e.Name == name {
				entries, found = append(entries[:i], entries[i+1:]...), true
				break
			}
		}
		if !found {
			return fmt.Errorf("%w: no person %q", shared.ErrConfigValidation, name)
		}
		if err := clusterinit.RevokePerson(trust, dir, name, now); err != nil {
			return err
		}
	}
	for _, p := range add {
		e, _, err := clusterinit.EnsurePerson(trust, dir, p, now)
		if err != nil {
			return err
		}
		kept := entries[:0]
		for _, old := range entries {
			if old.Name != p.Name {
				kept = append(kept, old)
			}
		}
		entries = append(kept, e)
	}
	return clusterinit.WriteRoster(path, entries)
}

// publishRosterFrom connects with dir's bootstrap identity and publishes
// dir's roster (and policy, when given).
func publishRosterFrom(ctx context.Context, conn connFlags, dir string, policy *roster.Policy, s stdio) error {
	conn.creds = filepath.Join(dir, "trust", shared.UserBootstrap+".creds")
	ctx, cancel := context.WithTimeout(ctx, operatorTimeout)
	defer cancel()
	nc, js, err := connectCLI(ctx, conn, s.stderr)
	if err != nil {
		return fmt.Errorf("the roster file is written; publishing it needs the mesh (run `sovkeys init` later): %w", err)
	}
	defer nc.Close()
	n, err := publishRoster(ctx, js, filepath.Join(dir, "trust", clusterinit.RosterFile), policy)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.stdout, "roster published: %d person(s)\n", n)
	return nil
}

// publishRoster makes the roster bucket hold exactly the people of file
// (bootstrap identity), audited in the operator log under "bootstrap".
func publishRoster(ctx context.Context, js jetstream.JetStream, file string, policy *roster.Policy) (int, error) {
	entries, err := clusterinit.ReadRoster(file)
	if err != nil {
		return 0, err
	}
	r, err := roster.Open(ctx, js)
	if err != nil {
		return 0, err
	}
	have, err := r.List(ctx)
	if err != nil {
		return 0, err
	}
	want := map[string]roster.Person{}
	for _, e := range entries {
		want[e.Name] = roster.Person{Name: e.Name, PublicKey: e.PublicKey, Roles: e.Roles, Added: e.Added, AddedBy: e.AddedBy}
	}
	audit := func(api string, params map[string]string) error {
		now := time.Now()
		return mesh.PublishAudit(ctx, js, &shared.AuditEvent{
			Version: shared.AuditEventVersion, RequestID: "roster-" + roster.NewID(), Kind: shared.AuditKindOperator,
			API: shared.API("operator." + api), Service: shared.AuditServicePerson(natsauth.BootstrapPerson), Start: now, End: now,
			CallerType: shared.CallerTypePerson, CallerID: natsauth.BootstrapPerson, Result: shared.ResultSuccess, Params: params,
		})
	}
	// What changes, each checked against the quorum before anything is
	// written (roster/people.go).
	type change struct {
		c      roster.PeopleChange
		person roster.Person
		id     string
	}
	var changes []change
	for _, p := range have {
		if _, ok := want[p.Name]; !ok {
			changes = append(changes, change{c: roster.PeopleChange{Op: roster.OpPersonRemove, Name: p.Name}, person: p})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		p := want[name]
		i := slices.IndexFunc(have, func(h roster.Person) bool { return h.Name == name })
		if i >= 0 && have[i].PublicKey == p.PublicKey && have[i].RoleNames() == p.RoleNames() {
			continue
		}
		changes = append(changes, change{c: roster.PeopleChange{Op: roster.OpPersonAdd, Name: name, Roles: p.RoleNames()}, person: p})
	}
	cur, err := r.Policy(ctx)
	if err != nil {
		return 0, err
	}
	if policy != nil && !samePolicy(cur, *policy) {
		changes = append(changes, change{c: roster.PeopleChange{Op: roster.OpQuorumSet, Policy: policy}})
	}
	gate := &roster.Gate{Roster: r, Now: time.Now}
	if kv, err := js.KeyValue(ctx, shared.BucketAdmin); err == nil {
		gate.Admin = kv
	}
	for i := range changes {
		if changes[i].id, err = gate.Approval(ctx, cur, have, changes[i].c); err != nil {
			return 0, err
		}
	}
	for _, ch := range changes {
		if err := gate.MarkExecuted(ctx, ch.id); err != nil {
			return 0, err
		}
		params := map[string]string{}
		if ch.id != "" {
			params["request_id"] = ch.id
		}
		var api string
		switch ch.c.Op {
		case roster.OpPersonRemove:
			api, params["person"], params["public_key"] = "person.remove", ch.person.Name, ch.person.PublicKey
		case roster.OpPersonAdd:
			api, params["person"], params["public_key"], params["roles"] = "person.add", ch.person.Name, ch.person.PublicKey, ch.person.RoleNames()
		default:
			b, _ := json.Marshal(policy.Quorum)
			api, params["quorum"] = "quorum.set", string(b)
		}
		if err := audit(api, params); err != nil {
			return 0, fmt.Errorf("%w: %w", errIntentNotAudited, err)
		}
		switch ch.c.Op {
		case roster.OpPersonRemove:
			err = r.Remove(ctx, ch.person.Name)
		case roster.OpPersonAdd:
			err = r.Put(ctx, ch.person)
		default:
			err = r.SetPolicy(ctx, *policy)
		}
		if err != nil {
			return 0, err
		}
	}
	// Releases written before releases were signed stay honoured; from
	// here on a release needs its approvals (killswitch, release.go).
	if ks, err := js.Stream(ctx, shared.KVStream(shared.BucketKillSwitch)); err == nil {
		if _, err := r.RecordLegacyReleases(ctx, ks.CachedInfo().State.LastSeq); err != nil {
			return 0, err
		}
	}
	return len(want), nil
}

func (o *operator) listPeople(ctx context.Context) error {
	r, err := roster.Open(ctx, o.js)
	if err != nil {
		return err
	}
	people, err := r.List(ctx)
	if err != nil {
		return err
	}
	pol, err := r.Policy(ctx)
	if err != nil {
		return err
	}
	type row struct {
		Name      string `json:"name"`
		Roles     string `json:"roles"`
		PublicKey string `json:"public_key"`
		Added     string `json:"added"`
	}
	out := struct {
		People []row          `json:"people"`
		Quorum map[string]int `json:"quorum"`
	}{People: []row{}, Quorum: pol.Quorum}
	for _, p := range people {
		out.People = append(out.People, row{Name: p.Name, Roles: p.RoleNames(), PublicKey: p.PublicKey, Added: p.Added.UTC().Format(time.RFC3339)})
	}
	return o.print(out)
}

func (o *operator) requests(ctx context.Context) (roster.Requests, error) {
	kv, err := mesh.BindKV(ctx, o.js, jetstream.KeyValueConfig{Bucket: shared.BucketAdmin})
	if err != nil {
		return roster.Requests{}, err
	}
	return roster.Requests{KV: kv}, nil
}

func (o *operator) listRequests(ctx context.Context) error {
	reqs, err := o.requests(ctx)
	if err != nil {
		return err
	}
	list, err := reqs.List(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	tw := tabwriter.NewWriter(o.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tSIGNED\tREQUESTER\tAPPROVED BY\tEXPIRES\tWHAT")
	for _, p := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", p.ID, p.StateAt(now), len(p.Signers()), p.Need, p.Requester(),
			strings.Join(p.Approvers(), ","), p.Expires.UTC().Format(time.RFC3339), p.Summary)
	}
	if kv, err := killswitch.Open(ctx, o.js, o.topo); err == nil {
		rel, err := killswitch.Pendings(ctx, kv)
		if err != nil {
			return err
		}
		for _, p := range rel {
			signers := append(p.Signers(), "")
			fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", p.ID, p.StateAt(now), len(p.Approvals), p.Need, signers[0],
				strings.Join(signers[1:len(signers)-1], ","), p.Expires.UTC().Format(time.RFC3339), "release kill switch "+p.Key)
		}
	}
	return tw.Flush()
}

// decision is the flags of approve and reject.
type decision struct{ id, reason string }

func decideFlags(f *decision, fs *flag.FlagSet) {
	fs.StringVar(&f.id, "id", "", "the request's id (from `sovkeys request list`)")
	fs.StringVar(&f.reason, "reason", "", "why (recorded in the audit log)")
}

func (o *operator) decide(ctx context.Context, endpoint string, f *decision) error {
	if _, err := o.person(); err != nil {
		return err
	}
	if f.id == "" {
		return fmt.Errorf("give the request's id: %w", errUsage)
	}
	if strings.HasPrefix(f.id, "ks-") {
		return o.decideRelease(ctx, endpoint == kwadmin.EndpointApprove, f.id, f.reason)
	}
	reqs, err := o.requests(ctx)
	if err != nil {
		return err
	}
	p, _, err := reqs.Get(ctx, f.id)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.errOut, "request %s by %s: %s\n", p.ID, p.Requester(), p.Summary)
	var resp kwadmin.DecideResponse
	d := kwadmin.DecideRequest{ID: p.ID, Digest: roster.Digest(p.Body), Reason: f.reason}
	if p.Service == roster.PlaceAuthn {
		err = kwadmin.CallAuthn(ctx, o.nc, endpoint, d, &resp)
	} else {
		err = kwadmin.Call(ctx, o.nc, p.Pool, endpoint, d, &resp)
	}
	if err != nil {
		return err
	}
	if resp.Error != "" {
		_ = o.print(resp)
		return errors.New("the request was approved but applying it failed: " + resp.Error)
	}
	return o.print(resp)
}

func samePolicy(a, b roster.Policy) bool {
	if len(a.Quorum) != len(b.Quorum) {
		return false
	}
	for op, n := range a.Quorum {
		if b.Quorum[op] != n {
			return false
		}
	}
	return true
}
