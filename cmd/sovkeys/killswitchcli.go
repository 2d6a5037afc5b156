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
		set("release", "--all | --keystore PREFIX | --tenant T  [--reason TEXT]", "release a kill switch; audited"),
		operatorCommand("killswitch status", "", "print every kill switch as JSON", none, func(ctx context.Context, o *operator, _ *struct{}) error {
			kv, err := killswitch.Open(ctx, o.js, o.topo)
			if err != nil {
				return err
			}
			out, err := killswitchStatus(ctx, kv)
			if err != nil {
				return err
			}
			return o.print(out)
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
	sw := killswitch.Switch{Engaged: verb == "engage", Reason: f.reason, By: o.who(), At: time.Now().UTC()}
	params := map[string]string{"scope": scope, "name": name, "reason": f.reason}
	return o.audited(ctx, "killswitch."+verb, params, func() error {
		if err := killswitch.Set(ctx, kv, scope, name, sw); err != nil {
			return err
		}
		return o.print(map[string]any{"scope": scope, "name": name, "engaged": sw.Engaged, "reason": f.reason})
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
