package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/clusterinit"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// initFlags are `sovkeys init`'s flags: the bootstrap identity's
// connection, the topology (the one place sizes come from) and the pools.
type initFlags struct {
	conn   connFlags
	topo   topologyFlags
	pools  string
	roster string
}

func initCommand() command {
	return define("init", "--creds BOOTSTRAP.creds [--pools default[,p2]] [--replicas 3] [--stream-siblings N]",
		"declare (or re-configure) every stream and bucket of the mesh with the bootstrap identity, and spread sibling stream leaders over the nodes; services only bind",
		groupOperator,
		func(fs *flag.FlagSet, getenv func(string) string, f *initFlags) {
			f.conn.register(fs, getenv)
			f.topo.register(fs)
			fs.StringVar(&f.pools, "pools", "default", "keyworker pools, comma separated (one work queue each)")
			fs.StringVar(&f.roster, "roster", "", "the people to publish in the roster (default: roster.json beside --creds, as `cluster init` writes it)")
		},
		func(ctx context.Context, f *initFlags, s stdio) error {
			pools := splitPools(f.pools)
			if len(pools) == 0 {
				return fmt.Errorf("%w: --pools is empty", shared.ErrConfigValidation)
			}
			topo := f.topo.t
			if topo.Siblings == 0 {
				topo.Siblings = min(topo.Replicas, shared.MaxSiblings) // one per node of an R-node cluster
			}
			if err := topo.Validate(); err != nil {
				return err // before dialling: a wrong flag says so at once
			}
			ctx, cancel := context.WithTimeout(ctx, operatorTimeout)
			defer cancel()
			nc, js, err := connectCLI(ctx, f.conn, s.stderr)
			if err != nil {
				return err
			}
			defer nc.Close()
			start := time.Now()
			if err := mesh.Bootstrap(ctx, js, topo, pools); err != nil {
				return err
			}
			fmt.Fprintf(s.stdout, "declared the streams and buckets of pools %s (replicas %d, %d sibling(s) of each request/work/audit stream) in %s\n",
				strings.Join(pools, ","), topo.Replicas, topo.Siblings, time.Since(start).Round(time.Millisecond))
			rosterFile := f.roster
			if rosterFile == "" && f.conn.creds != "" {
				rosterFile = filepath.Join(filepath.Dir(f.conn.creds), clusterinit.RosterFile)
			}
			if _, err := os.Stat(rosterFile); err == nil {
				n, err := publishRoster(ctx, js, rosterFile, nil)
				if err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "roster: %d person(s) from %s\n", n, rosterFile)
			} else if f.roster != "" {
				return fmt.Errorf("%w: --roster: %v", shared.ErrConfigValidation, err)
			}
			if f.conn.creds != "" { // workkeys.go: authn's work keys, as cluster init listed them
				if err := pinWorkKeysFrom(ctx, js, filepath.Join(filepath.Dir(f.conn.creds), clusterinit.WorkKeysFile), s.stdout); err != nil {
					return err
				}
			}
			start = time.Now()
			moves, err := mesh.SpreadLeaders(ctx, js, topo, pools)
			moved := 0
			for _, m := range moves {
				if m.From != m.To {
					moved++
				}
			}
			if len(moves) > 0 {
				fmt.Fprintf(s.stdout, "leaders: %d placed on their nodes, %d moved, in %s\n", len(moves), moved, time.Since(start).Round(time.Millisecond))
			}
			if err != nil {
				// Placement is an optimisation: a node still catching up is
				// skipped; run init again once the cluster is whole.
				fmt.Fprintf(s.stderr, "sovkeys init: some leaders could not be placed (run init again when every node is current): %v\n", err)
			}
			return nil
		})
}

func splitPools(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
