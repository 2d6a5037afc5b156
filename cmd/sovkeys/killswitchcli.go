package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
)

func runKillswitch(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 1 {
		return errUsage
	}
	cmd := args[0]
	var keystore, tenant, reason string
	var all bool
	define := func(fs *flag.FlagSet) {
		fs.StringVar(&keystore, "keystore", "", "stop one XKS key store (URI prefix)")
		fs.StringVar(&tenant, "tenant", "", "stop one volume-secret tenant")
		fs.BoolVar(&all, "all", false, "stop every crypto operation of the deployment")
		fs.StringVar(&reason, "reason", "", "why (recorded in the audit log)")
	}
	switch cmd {
	case "engage", "release":
	case "status":
		return withOperator(ctx, "killswitch status", args[1:], getenv, stdout, stderr, func(*flag.FlagSet) {}, func(ctx context.Context, o *operator) error {
			kv, err := killswitch.Open(ctx, o.js, o.topo)
			if err != nil {
				return err
			}
			out := map[string]killswitch.Switch{}
			lister, err := kv.ListKeys(ctx)
			if err == nil {
				for k := range lister.Keys() {
					if e, err := kv.Get(ctx, k); err == nil {
						var sw killswitch.Switch
						if jsonUnmarshal(e.Value(), &sw) == nil {
							out[k] = sw
						}
					}
				}
			}
			return o.print(out)
		})
	default:
		return fmt.Errorf("unknown command killswitch %s: %w", cmd, errUsage)
	}
	return withOperator(ctx, "killswitch "+cmd, args[1:], getenv, stdout, stderr, define, func(ctx context.Context, o *operator) error {
		scope, name := killswitch.ScopeAll, ""
		switch n := btoi(all) + btoi(keystore != "") + btoi(tenant != ""); {
		case n != 1:
			return fmt.Errorf("%w: name exactly one of --all, --keystore, --tenant", shared.ErrConfigValidation)
		case keystore != "":
			scope, name = killswitch.ScopeKeystore, strings.Trim(keystore, "/")
		case tenant != "":
			scope, name = killswitch.ScopeTenant, tenant
		}
		if cmd == "engage" && strings.TrimSpace(reason) == "" {
			return fmt.Errorf("%w: --reason is required to engage", shared.ErrConfigValidation)
		}
		kv, err := killswitch.Open(ctx, o.js, o.topo)
		if err != nil {
			return err
		}
		host, _ := os.Hostname()
		sw := killswitch.Switch{Engaged: cmd == "engage", Reason: reason, By: o.getenv("USER") + "@" + host, At: time.Now().UTC()}
		params := map[string]string{"scope": scope, "name": name, "reason": reason}
		return o.audited(ctx, "killswitch."+cmd, params, func() error {
			if err := killswitch.Set(ctx, kv, scope, name, sw); err != nil {
				return err
			}
			return o.print(map[string]any{"scope": scope, "name": name, "engaged": sw.Engaged, "reason": reason})
		})
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
