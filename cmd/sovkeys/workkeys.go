package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/clusterinit"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// Work keys (shared/envelope_sig.go): authn signs the work it queues with
// --work-key; the bootstrap identity pins the public keys in the roster
// bucket (`sovkeys init` from workkeys.json beside its credential, a
// standalone node at every start).

// workKeyPath is authn's work key: --work-key, else authn.workkey beside
// --creds (where cluster init and standalone write it).
func workKeyPath(flag, creds string) string {
	if flag != "" || creds == "" {
		return flag
	}
	return filepath.Join(filepath.Dir(creds), shared.WorkKeyFile)
}

// pinWorkKeysFrom pins the keys listed in file (workkeys.json), if it
// exists, with the bootstrap identity's js.
func pinWorkKeysFrom(ctx context.Context, js jetstream.JetStream, file string, stdout io.Writer) error {
	pubs, err := clusterinit.ReadWorkKeys(file)
	if err != nil || pubs == nil {
		return err
	}
	return pinWorkKeys(ctx, js, pubs, stdout)
}

func pinWorkKeys(ctx context.Context, js jetstream.JetStream, pubs []string, stdout io.Writer) error {
	kv, err := mesh.BindKV(ctx, js, jetstream.KeyValueConfig{Bucket: shared.BucketOperators})
	if err != nil {
		return err
	}
	added, removed, err := roster.PinWorkKeys(ctx, kv, pubs)
	if err != nil {
		return err
	}
	if stdout != nil && (len(added) > 0 || len(removed) > 0) {
		fmt.Fprintf(stdout, "authn work keys: %d pinned, %d added, %d removed\n", len(pubs), len(added), len(removed))
	}
	return nil
}

// ensureStandaloneWorkKey makes the node's authn work key at start when
// missing (a data directory of an earlier version has none) and returns
// its public key.
func ensureStandaloneWorkKey(dir string) (string, error) {
	pub, _, err := shared.EnsureWorkKey(filepath.Join(dir, "creds", shared.WorkKeyFile))
	return pub, err
}
