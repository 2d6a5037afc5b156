package clusterinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// Keyworkers: one NATS user per pool (shared.KeyworkerUser,
// creds/keyworker-<pool>.creds) whose rights name that pool only: its work
// queue, admin subjects, PKI and pins. A stolen credential of pool A reads
// nothing of pool B and writes none of its keys. The one keyworker user of
// every pool that earlier versions wrote (creds/keyworker.creds) is revoked
// and deleted.

// LegacyKeyworkerCreds is the all-pools keyworker credential of earlier
// versions, revoked and removed by Init.
const LegacyKeyworkerCreds = "keyworker.creds"

// KeyworkerCredsFile is where pool's keyworker credential is written.
func KeyworkerCredsFile(dir, pool string) string {
	return filepath.Join(dir, "creds", shared.KeyworkerUser(pool)+".creds")
}

// revokeLegacyKeyworker revokes and removes the all-pools keyworker
// credential of earlier versions (before the account JWT is written).
func revokeLegacyKeyworker(trust *natsauth.Trust, dir string, res *Result) error {
	legacy := filepath.Join(dir, "creds", LegacyKeyworkerCreds)
	if _, err := os.Stat(legacy); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("%w: %v", ErrInit, err)
	}
	if err := revokeCredsFile(trust, legacy, time.Now()); err != nil {
		return err
	}
	res.Written = append(res.Written, legacy)
	return nil
}

// ensureKeyworkers writes (or keeps) one keyworker credential per pool.
func ensureKeyworkers(trust *natsauth.Trust, accPub, dir string, pools []string, res *Result) error {
	for _, p := range pools {
		user, path := shared.KeyworkerUser(p), KeyworkerCredsFile(dir, p)
		wrote, err := ensureCreds(trust, accPub, path, user, natsauth.UserPermissions(user, natsauth.ServiceKeyworker, []string{p}))
		if err != nil {
			return err
		}
		if wrote {
			res.Written = append(res.Written, path)
		}
		res.Creds[user] = path
	}
	return nil
}
