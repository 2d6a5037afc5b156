package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// initFlags are `sovkeys init`'s flags: the bootstrap identity's
// connection, the topology (the one place sizes come from) and the pools.
type initFlags struct {
	conn  connFlags
	topo  topologyFlags
	pools string
}

func initCommand() command {
	return define("init", "--creds BOOTSTRAP.creds [--pools default[,p2]] [--replicas 3]",
		"declare (or re-configure) every stream and bucket of the mesh with the bootstrap identity; services only bind",
		groupOperator,
		func(fs *flag.FlagSet, getenv func(string) string, f *initFlags) {
			f.conn.register(fs, getenv)
			f.topo.register(fs)
			fs.StringVar(&f.pools, "pools", "default", "keyworker pools, comma separated (one work queue each)")
		},
		func(ctx context.Context, f *initFlags, s stdio) error {
			pools := splitPools(f.pools)
			if len(pools) == 0 {
				return fmt.Errorf("%w: --pools is empty", shared.ErrConfigValidation)
			}
			ctx, cancel := context.WithTimeout(ctx, operatorTimeout)
			defer cancel()
			nc, js, err := connectCLI(ctx, f.conn, s.stderr)
			if err != nil {
				return err
			}
			defer nc.Close()
			if err := mesh.Bootstrap(ctx, js, f.topo.t, pools); err != nil {
				return err
			}
			fmt.Fprintf(s.stdout, "declared the streams and buckets of pools %s (replicas %d)\n", strings.Join(pools, ","), f.topo.t.Replicas)
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
