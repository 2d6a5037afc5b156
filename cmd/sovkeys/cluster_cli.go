package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/services/gateway"
	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/clusterinit"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// clusterInitFlags are the flags of `sovkeys cluster init`.
type clusterInitFlags struct {
	out, name, hosts      string
	nodes, gateways, base int
	pools, users          listFlag
	operators, removeOps  listFlag
	cert, key, ca         string
	gatewayPortBase       int
	validity              time.Duration
	rotate, revoke        listFlag
	monitorHost           string
	reload                string
}

func clusterCommands() []command {
	return []command{define("cluster init", "--out DIR [--nodes 3] [--pool NAME]... [--operator NAME:ROLE[+ROLE]]... [--remove-operator NAME]... [--rotate USER]... [--revoke USER|UKEY]... [--gateways N]",
		"write the NATS cluster of a deployment: trust, expiring per-service credentials, one credential per person, a cluster CA, nats-server configs (run again to add a pool or person, renew, rotate or revoke; running nodes reload)",
		groupOperator, registerClusterInit, runClusterInit),
		define("keyworker repair-hierarchy", "--hsm-module SO --hsm-token-label LABEL [--keep LABEL=ID]... [--confirm]",
			"list duplicate key-hierarchy objects on an HSM token; with --confirm keep one copy of each and destroy the others",
			groupOperator, registerRepair, runRepair),
	}
}

// repairFlags are the flags of `sovkeys keyworker repair-hierarchy`.
type repairFlags struct {
	module, token, pinFile string
	keep                   listFlag
	confirm                bool
}

func registerRepair(fs *flag.FlagSet, getenv func(string) string, f *repairFlags) {
	fs.StringVar(&f.module, "hsm-module", getenv("SOVKEYS_HSM_MODULE"), "PKCS#11 module path (env SOVKEYS_HSM_MODULE)")
	fs.StringVar(&f.token, "hsm-token-label", envOr(getenv, "SOVKEYS_HSM_TOKEN_LABEL", "sovkeys"), "token label (env SOVKEYS_HSM_TOKEN_LABEL)")
	fs.StringVar(&f.pinFile, "hsm-pin-file", "", "file holding the user PIN (else env SOVKEYS_HSM_PIN)")
	fs.Var(&f.keep, "keep", "LABEL=ID: the copy to keep (ids from the dry run; default the first listed), repeatable")
	fs.BoolVar(&f.confirm, "confirm", false, "destroy the copies not kept (irreversible; without it nothing changes)")
}

func runRepair(ctx context.Context, f *repairFlags, s stdio) error {
	pin, ok, err := readPIN(f.pinFile, s.getenv)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("keyworker repair-hierarchy: the HSM PIN is required (--hsm-pin-file or SOVKEYS_HSM_PIN): %w", errUsage)
	}
	keep := map[string]string{}
	for _, kv := range f.keep {
		label, id, found := strings.Cut(kv, "=")
		if !found {
			return fmt.Errorf("keyworker repair-hierarchy: --keep %q is not LABEL=ID: %w", kv, errUsage)
		}
		keep[label] = id
	}
	logger, err := newLogger(s.stderr, "warn")
	if err != nil {
		return err
	}
	h, err := keyworker.OpenHSM(ctx, keyworker.HSMConfig{ModulePath: f.module, TokenLabel: f.token, PIN: pin, Sessions: 1}, logger)
	if err != nil {
		return err
	}
	defer closeHSM(h, logger)
	copies, err := h.RepairHierarchy(ctx, keep, f.confirm)
	if err != nil {
		return err
	}
	if len(copies) == 0 {
		fmt.Fprintln(s.stdout, "no duplicate hierarchy keys on this token")
		return nil
	}
	for _, c := range copies {
		action := "destroy"
		switch {
		case c.Keep:
			action = "keep"
		case f.confirm:
			action = "destroyed"
		}
		fmt.Fprintf(s.stdout, "%-9s %s id=%s objects=%d\n", action, c.Label, c.ID, len(c.Handles))
	}
	if !f.confirm {
		fmt.Fprintln(s.stdout, "dry run: nothing changed; rerun with --confirm (and --keep LABEL=ID to choose) to destroy the others")
	}
	return nil
}

func registerClusterInit(fs *flag.FlagSet, _ func(string) string, f *clusterInitFlags) {
	fs.StringVar(&f.out, "out", "", "output directory (seeds under DIR/trust stay; keep it private)")
	fs.IntVar(&f.nodes, "nodes", 0, "nats-server nodes (default 3, or the earlier run's)")
	fs.Var(&f.pools, "pool", "keyworker pool, repeatable (added to the earlier run's; default \"default\")")
	fs.Var(&f.users, "user", "extra user of the permission table beyond the four services, repeatable (e.g. bootstrap)")
	fs.Var(&f.operators, "operator", "a person and their roles, NAME:ROLE[+ROLE] with roles admin, security, custodian, auditor (repeatable; added to the earlier run's, roles replaced)")
	fs.Var(&f.removeOps, "remove-operator", "a person to remove: their credential is revoked (repeatable)")
	fs.IntVar(&f.gateways, "gateways", 2, "gateways of the test deployment: writes DIR/tls (a local CA and a 127.0.0.1 certificate) when > 0")
	fs.IntVar(&f.gatewayPortBase, "gateway-port-base", 8443, "HTTPS port of the first gateway in the printed commands (next ones +1)")
	fs.IntVar(&f.base, "port-base", 0, "client port of node 1 (routes +100, monitoring +200; default 14222)")
	fs.StringVar(&f.hosts, "hosts", "", "comma-separated node addresses, one per node (default: all on 127.0.0.1 with distinct ports)")
	fs.StringVar(&f.name, "cluster-name", "", "JetStream cluster name (default sovkeys)")
	fs.StringVar(&f.cert, "nats-tls-cert", "", "NATS TLS certificate of the nodes (serverAuth and clientAuth: routes are mutual TLS)")
	fs.StringVar(&f.key, "nats-tls-key", "", "private key of --nats-tls-cert")
	fs.StringVar(&f.ca, "nats-tls-ca", "", "CA that clients and routes trust for NATS TLS (without --nats-tls-*: a cluster CA of its own under DIR/nats/tls)")
	fs.DurationVar(&f.validity, "validity", 0, "lifetime of the user credentials issued (default 2160h = 90 days, or the earlier run's); renewed by a run when a third is left")
	fs.Var(&f.rotate, "rotate", "re-issue USER's credential (a service, bootstrap or a person) and revoke the old key, repeatable")
	fs.Var(&f.revoke, "revoke", "revoke USER's credential (a service or bootstrap; not re-issued until --rotate USER) or a user public key U..., repeatable")
	fs.StringVar(&f.monitorHost, "monitor-host", "", "address the nodes' monitoring port listens on (default 127.0.0.1: it is unauthenticated)")
	fs.StringVar(&f.reload, "reload", "auto", "ask the running nodes to reload their configs over the system account, so revocations apply at once: auto (when a config changed), always, never")
}

func runClusterInit(ctx context.Context, f *clusterInitFlags, s stdio) error {
	if f.out == "" {
		return fmt.Errorf("cluster init: --out is required: %w", errUsage)
	}
	if f.reload != "auto" && f.reload != "always" && f.reload != "never" {
		return fmt.Errorf("cluster init: --reload %q: want auto, always or never: %w", f.reload, errUsage)
	}
	users := []string{}
	for _, svc := range services() {
		users = append(users, svc.name)
	}
	users = append(users, f.users...)
	abs := func(p string) string {
		if p == "" {
			return ""
		}
		a, err := filepath.Abs(p)
		if err != nil {
			return p
		}
		return a
	}
	var people []clusterinit.PersonSpec
	for _, o := range f.operators {
		p, err := clusterinit.ParsePersonSpec(o)
		if err != nil {
			return err
		}
		people = append(people, p)
	}
	_, statErr := os.Stat(filepath.Join(f.out, clusterinit.StateFile))
	existed := statErr == nil
	res, err := clusterinit.Init(clusterinit.Config{
		Operators: people, RemoveOperators: f.removeOps,
		Validity: f.validity, Rotate: f.rotate, Revoke: f.revoke, MonitorHost: f.monitorHost,
		Dir: f.out, Nodes: f.nodes, Pools: f.pools, Users: users, ClusterName: f.name,
		Hosts: splitList(f.hosts), PortBase: f.base,
		TLS: clusterinit.TLSFiles{CertFile: abs(f.cert), KeyFile: abs(f.key), CAFile: abs(f.ca)},
	})
	if err != nil {
		return err
	}
	var gwTLS gateway.DevTLS
	if f.gateways > 0 {
		if gwTLS, err = gateway.EnsureDevTLS(filepath.Join(res.Dir, "tls"), time.Now()); err != nil {
			return err
		}
	}
	w := s.stdout
	fmt.Fprintf(w, "sovkeys cluster in %s (pools %s; %d file(s) written)\n\nNATS nodes (start each with `nats-server -c FILE`):\n",
		res.Dir, strings.Join(res.Pools, ","), len(res.Written))
	for _, n := range res.Nodes {
		fmt.Fprintf(w, "  %s  %s  %s  (health %s/healthz)\n", n.Name, n.ClientURL(), n.ConfigFile, n.MonitorURL())
	}
	fmt.Fprintf(w, "\nNATS TLS: clients verify the nodes with %s (SOVKEYS_NATS_CA, in %s)\n", res.CAFile, res.EnvFile)
	fmt.Fprintf(w, "\nCredentials (expire; a run renews them when a third of --validity is left):\n")
	for _, u := range users {
		if u == natsauth.ServiceKeyworker { // one per pool
			for _, p := range res.Pools {
				fmt.Fprintf(w, "  %-10s %s\n", shared.KeyworkerUser(p), res.Creds[shared.KeyworkerUser(p)])
			}
			continue
		}
		if res.Creds[u] == "" {
			fmt.Fprintf(w, "  %-10s revoked (--rotate %s issues a new one)\n", u, u)
			continue
		}
		fmt.Fprintf(w, "  %-10s %s\n", u, res.Creds[u])
	}
	fmt.Fprintf(w, "  %-10s %s  (declares the mesh and writes the roster: `sovkeys init`)\n", "bootstrap", res.Creds["bootstrap"])
	fmt.Fprintf(w, "\nServices (all with --replicas %d):\n  export SOVKEYS_NATS_URL=%s SOVKEYS_NATS_CA=%s\n", min(len(res.Nodes), 3), res.URLs, res.CAFile)
	rep := fmt.Sprintf("--replicas %d", min(len(res.Nodes), 3))
	for i := range f.gateways {
		fmt.Fprintf(w, "  sovkeys gateway   --creds %s %s --listen 127.0.0.1:%d --tls-cert %s --tls-key %s\n",
			res.Creds["gateway"], rep, f.gatewayPortBase+i, gwTLS.CertFile, gwTLS.KeyFile)
	}
	for _, svc := range []string{"authn", "audit"} {
		fmt.Fprintf(w, "  sovkeys %-9s --creds %s %s\n", svc, res.Creds[svc], rep)
	}
	for _, p := range res.Pools {
		fmt.Fprintf(w, "  sovkeys keyworker --creds %s %s --pool %s --hsm-module SO --hsm-token-label LABEL\n", res.Creds[shared.KeyworkerUser(p)], rep, p)
	}
	fmt.Fprintf(w, "\nPeople (give each their own file; `sovkeys init` publishes the roster):\n")
	if len(res.People) == 0 {
		fmt.Fprintf(w, "  none yet: add them with --operator NAME:ROLE[+ROLE] (docs/operations.md, \"Day one\")\n")
	}
	for _, p := range res.People {
		var roles []string
		for _, r := range p.Roles {
			roles = append(roles, string(r))
		}
		fmt.Fprintf(w, "  %-10s %-32s export SOVKEYS_NATS_CREDS=%s\n", p.Name, strings.Join(roles, "+"), clusterinit.PersonCredsFile(res.Dir, p.Name))
	}
	if gwTLS.CAFile != "" {
		fmt.Fprintf(w, "Gateway TLS (test deployment only): trust anchor %s\n", gwTLS.CAFile)
	}
	if f.reload == "always" || f.reload == "auto" && res.NodesChanged && existed {
		reloadNodes(ctx, res, w)
	}
	return nil
}

// reloadNodes asks the running nodes to reload their changed configs
// (revocations take effect at once); nodes that are down load them at
// start.
func reloadNodes(ctx context.Context, res *clusterinit.Result, w io.Writer) {
	done, err := clusterinit.Reload(ctx, clusterinit.ReloadConfig{Dir: res.Dir, URLs: res.URLs, CAFile: res.CAFile, Nodes: len(res.Nodes)})
	if err == nil {
		fmt.Fprintf(w, "\nNode configs changed: %d node(s) reloaded them (%s)\n", len(done), strings.Join(done, ", "))
		return
	}
	fmt.Fprintf(w, "\nNode configs changed; reload them on every node (copy %s/nats/ first when nodes run elsewhere):\n"+
		"  nats-server --signal reload=PID   (or kill -HUP PID)\n  (%v)\n", res.Dir, err)
}
