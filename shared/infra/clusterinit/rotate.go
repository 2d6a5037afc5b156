package clusterinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// userCreds is the permission set and creds file of service (or
// bootstrap) user u.
func userCreds(dir, u string, pools []string) (natsauth.Permissions, string) {
	if u == shared.UserBootstrap {
		// The declaring identity lives with the trust seeds: no running
		// service holds it (`sovkeys init --creds DIR/trust/bootstrap.creds`).
		return natsauth.BootstrapPermissions(), filepath.Join(dir, "trust", shared.UserBootstrap+".creds")
	}
	return natsauth.ServicePermissions(u, pools), filepath.Join(dir, "creds", u+".creds")
}

// rotateAndRevoke applies cfg.Rotate and cfg.Revoke before the credentials
// are ensured: a rotated user's key is revoked and its file left in place,
// so EnsureCreds rewrites it there (a file bind-mounted into a container
// keeps showing the new contents; a running service follows it,
// mesh.WatchCreds); a revoked service user's file is removed too, and it
// stays suspended (no new file) until rotated; a revoked public key is
// added to the list.
func rotateAndRevoke(trust *natsauth.Trust, dir string, st *state, cfg Config, now time.Time) error {
	for _, name := range cfg.Rotate {
		if slices.Contains(cfg.Revoke, name) {
			return fmt.Errorf("%w: %q both rotated and revoked", ErrInit, name)
		}
		var paths []string
		switch {
		case len(keyworkerCreds(dir, name, st.Pools)) > 0:
			paths = keyworkerCreds(dir, name, st.Pools)
		case name == shared.UserBootstrap || slices.Contains(st.Users, name):
			_, path := userCreds(dir, name, st.Pools)
			paths = []string{path}
		case st.Operators[name] != nil:
			paths = []string{PersonCredsFile(dir, name)}
		default:
			return fmt.Errorf("%w: --rotate %q: no such service user or person", ErrInit, name)
		}
		for _, path := range paths {
			if err := revokeKeyOf(trust, path, now); err != nil {
				return err
			}
		}
		st.Suspended = slices.DeleteFunc(st.Suspended, func(s string) bool { return s == name })
	}
	for _, name := range cfg.Revoke {
		switch {
		case nkeys.IsValidPublicUserKey(name):
			if err := trust.Revoke(name, now); err != nil {
				return fmt.Errorf("%w: %w", ErrInit, err)
			}
		case name != natsauth.ServiceKeyworker && len(keyworkerCreds(dir, name, st.Pools)) > 0:
			// One pool's keyworker user: revoked and issued anew (suspend
			// every keyworker with --revoke keyworker).
			if err := revokeKeyOf(trust, keyworkerCreds(dir, name, st.Pools)[0], now); err != nil {
				return err
			}
		case name == shared.UserBootstrap || slices.Contains(st.Users, name):
			paths := keyworkerCreds(dir, name, st.Pools)
			if len(paths) == 0 {
				_, path := userCreds(dir, name, st.Pools)
				paths = []string{path}
			}
			for _, path := range paths {
				if err := revokeCredsFile(trust, path, now); err != nil {
					return err
				}
			}
			if !slices.Contains(st.Suspended, name) {
				st.Suspended = append(st.Suspended, name)
			}
		case st.Operators[name] != nil:
			return fmt.Errorf("%w: --revoke %q is a person: --remove-operator removes them, --rotate gives them a new credential", ErrInit, name)
		default:
			return fmt.Errorf("%w: --revoke %q: no such service user, and not a user public key (U...)", ErrInit, name)
		}
	}
	return nil
}

// keyworkerCreds returns the credential files name stands for when it
// names keyworkers: "keyworker" every pool's, "keyworker-<pool>" one.
func keyworkerCreds(dir, name string, pools []string) []string {
	var out []string
	for _, p := range pools {
		if name == natsauth.ServiceKeyworker || name == shared.KeyworkerUser(p) {
			out = append(out, KeyworkerCredsFile(dir, p))
		}
	}
	return out
}

// revokeKeyOf revokes the user of creds file path (none: nothing to do),
// leaving the file.
func revokeKeyOf(trust *natsauth.Trust, path string, now time.Time) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInit, err)
	}
	uc, err := decodeCreds(b)
	if err != nil {
		return nil // not a credential: ensureCreds replaces it
	}
	if err := trust.Revoke(uc.Subject, now); err != nil {
		return fmt.Errorf("%w: %w", ErrInit, err)
	}
	return nil
}
