package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// killswitchFlags name one scope of the kill switch.
type killswitchFlags struct {
	keystore, tenant, reason string
	all                      bool
}

func (f *killswitchFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.keystore, "keystore", "", "stop one XKS key store (URI prefix)")
	fs.StringVar(&f.tenant, "tenant", "", "stop one volume-secret tenant")
	fs.BoolVar(&f.all, "all", false, "stop every crypto operation of the deployment")
	fs.StringVar(&f.reason, "reason", "", "why (recorded in the audit log)")
}

func killswitchCommands() []command {
	set := func(verb, usage, short string) command {
		return operatorCommand("killswitch "+verb, usage, short, (*killswitchFlags).register,
			func(ctx context.Context, o *operator, f *killswitchFlags) error { return o.killswitchSet(ctx, verb, f) })
	}
	return []command{
		set("engage", "--all | --keystore PREFIX | --tenant T  --reason TEXT", "emergency stop of crypto, cluster-wide within milliseconds; audited"),
		set("release", "--all | --keystore PREFIX | --tenant T  [--reason TEXT]",
			"sign the release of a kill switch: released once enough security people signed (quorum, default 2; exit status 3 while it waits); audited"),
		operatorCommand("killswitch status", "", "print every kill switch as JSON", none, func(ctx context.Context, o *operator, _ *struct{}) error {
			kv, err := killswitch.Open(ctx, o.js, o.topo)
			if err != nil {
				return err
			}
			out, err := killswitchStatus(ctx, kv)
			if err != nil {
				return err
			}
			return o.print(checkReleases(ctx, o, kv, out))
		}),
	}
}

// killswitchStatus reads every switch. Any read or decode error fails the
// whole status: an operator must never see "nothing engaged" because a
// read failed.
func killswitchStatus(ctx context.Context, kv jetstream.KeyValue) (map[string]killswitch.Switch, error) {
	out := map[string]killswitch.Switch{}
	lister, err := kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kill switch status: %w", err)
	}
	for k := range lister.Keys() {
		if !killswitch.IsSwitchKey(k) {
			continue // a release waiting for approvals (`sovkeys request list`)
		}
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // deleted since listed
		}
		if err != nil {
			return nil, fmt.Errorf("kill switch status: %s: %w", k, err)
		}
		var sw killswitch.Switch
		if err := json.Unmarshal(e.Value(), &sw); err != nil {
			return nil, fmt.Errorf("kill switch status: %s: %w", k, err)
		}
		out[k] = sw
	}
	return out, nil
}

// switchStatus is a switch as `killswitch status` prints it: a release
// says whether the services verify it (a release they refuse stops like
// an engagement).
type switchStatus struct {
	killswitch.Switch
	ReleaseCheck string `json:"release_check,omitempty"`
}

func checkReleases(ctx context.Context, o *operator, kv jetstream.KeyValue, in map[string]killswitch.Switch) map[string]switchStatus {
	out := map[string]switchStatus{}
	var proof *killswitch.Proof
	if r, err := roster.Open(ctx, o.js); err == nil {
		proof = &killswitch.Proof{KV: kv, Roster: r}
	}
	for k, sw := range in {
		st := switchStatus{Switch: sw}
		if !sw.Engaged {
			st.ReleaseCheck = "ok"
			e, err := kv.Get(ctx, k)
			if err == nil && proof != nil {
				err = proof.Check(ctx, e, sw)
			} else if err == nil {
				err = errors.New("the roster is not readable")
			}
			if err != nil {
				st.ReleaseCheck = "refused, the switch stays engaged: " + err.Error()
			}
		}
		out[k] = st
	}
	return out
}

func (o *operator) killswitchSet(ctx context.Context, verb string, f *killswitchFlags) error {
	scope, name := killswitch.ScopeAll, ""
	switch n := btoi(f.all) + btoi(f.keystore != "") + btoi(f.tenant != ""); {
	case n != 1:
		return fmt.Errorf("%w: name exactly one of --all, --keystore, --tenant", shared.ErrConfigValidation)
	case f.keystore != "":
		scope, name = killswitch.ScopeKeystore, strings.Trim(f.keystore, "/")
	case f.tenant != "":
		scope, name = killswitch.ScopeTenant, f.tenant
	}
	if verb == "engage" && strings.TrimSpace(f.reason) == "" {
		return fmt.Errorf("%w: --reason is required to engage", shared.ErrConfigValidation)
	}
	kv, err := killswitch.Open(ctx, o.js, o.topo)
	if err != nil {
		return err
	}
	params := map[string]string{"scope": scope, "name": name, "reason": f.reason}
	if verb == "release" {
		return o.audited(ctx, "killswitch.release", params, func() error {
			return o.killswitchRelease(ctx, kv, killswitch.Key(scope, name), f.reason)
		})
	}
	sw := killswitch.Switch{Engaged: true, Reason: f.reason, By: o.who(), At: time.Now().UTC()}
	return o.audited(ctx, "killswitch."+verb, params, func() error {
		if err := killswitch.Set(ctx, kv, scope, name, sw); err != nil {
			return err
		}
		return o.print(map[string]any{"scope": scope, "name": name, "engaged": sw.Engaged, "reason": f.reason})
	})
}

// releaser is this person releasing kill switches.
func (o *operator) releaser(ctx context.Context, kv jetstream.KeyValue) (*killswitch.Releaser, error) {
	signer, err := o.person()
	if err != nil {
		return nil, err
	}
	r, err := roster.Open(ctx, o.js)
	if err != nil {
		return nil, err
	}
	return &killswitch.Releaser{KV: kv, Roster: r, Signer: signer, Now: time.Now}, nil
}

// killswitchRelease signs the release of switch key; the signature that
// completes the quorum writes it. Fewer signatures leave it pending
// (roster.PendingError: exit status 3).
func (o *operator) killswitchRelease(ctx context.Context, kv jetstream.KeyValue, key, reason string) error {
	r, err := o.releaser(ctx, kv)
	if err != nil {
		return err
	}
	res, err := r.Release(ctx, key, reason)
	if err != nil {
		return err
	}
	if res.WasReleased {
		return o.print(map[string]any{"switch": key, "engaged": false, "note": "not engaged: nothing to release"})
	}
	if !res.Released {
		p := res.Pending
		return &roster.PendingError{ID: p.ID, Need: p.Need, Signers: p.Signers()}
	}
	return o.print(map[string]any{"switch": key, "engaged": false, "approved_by": res.Pending.Signers()})
}

// decideRelease approves or rejects a pending kill switch release (an id
// from `request list` that starts with "ks-").
func (o *operator) decideRelease(ctx context.Context, approve bool, id, reason string) error {
	kv, err := killswitch.Open(ctx, o.js, o.topo)
	if err != nil {
		return err
	}
	p, err := killswitch.FindPending(ctx, kv, id)
	if err != nil {
		return err
	}
	if st := p.StateAt(time.Now()); st != roster.StatePending {
		return shared.NewError(shared.CodeInvalidState, "request %s is %s", id, st)
	}
	params := map[string]string{"switch": p.Key, "request_id": id, "reason": reason}
	if approve {
		return o.audited(ctx, "killswitch.release", params, func() error {
			return o.killswitchRelease(ctx, kv, p.Key, p.Reason)
		})
	}
	return o.audited(ctx, "killswitch.release.reject", params, func() error {
		r, err := o.releaser(ctx, kv)
		if err != nil {
			return err
		}
		p, err := r.Reject(ctx, id)
		if err != nil {
			return err
		}
		return o.print(map[string]any{"id": p.ID, "state": p.State, "switch": p.Key})
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
