package registry

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
)

var (
	// ErrNoCredential: the key store has no credential with that access key id.
	ErrNoCredential = errors.New("registry: no such credential")
	// ErrLastCredential: retiring would leave the key store without a credential.
	ErrLastCredential = errors.New("registry: refusing to retire the last credential; rotate first")
	// ErrCredentialsFull: a rotation would retire a credential that may be live.
	ErrCredentialsFull = errors.New("registry: key store already has two live credentials")
)

const akidAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

// Sealer seals data under aad with the HSM of a keyworker pool.
type Sealer func(ctx context.Context, pool string, data, aad []byte) ([]byte, error)

// KWAdminSealer seals through the pool's keyworker admin API over nc.
func KWAdminSealer(nc *nats.Conn) Sealer {
	return func(ctx context.Context, pool string, data, aad []byte) ([]byte, error) {
		var sealed kwadmin.SealResponse
		if err := kwadmin.Call(ctx, nc, pool, kwadmin.EndpointSeal, kwadmin.SealRequest{Data: data, AAD: aad}, &sealed); err != nil {
			return nil, fmt.Errorf("seal with pool %q: %w", pool, err)
		}
		return sealed.Data, nil
	}
}

// newAccessKey makes an access key id of 20 characters of [A-Z2-7] and a
// 44-character secret, the shapes AWS KMS accepts for an XKS proxy.
func newAccessKey() (akid, secret string, err error) {
	b := make([]byte, 20+33)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("registry: random: %w", err)
	}
	id := make([]byte, 20)
	for i, v := range b[:20] {
		id[i] = akidAlphabet[int(v)%len(akidAlphabet)] // 256 is a multiple of 32: no bias
	}
	return string(id), base64.StdEncoding.EncodeToString(b[20:]), nil
}

// MintCredential makes a new SigV4 credential for the key store prefix held
// by pool: the secret is sealed by the pool's HSM, bound to prefix and access
// key id (SealAAD), and returned in clear only to be shown once.
func MintCredential(ctx context.Context, seal Sealer, prefix, pool string, now time.Time) (Credential, string, error) {
	akid, secret, err := newAccessKey()
	if err != nil {
		return Credential{}, "", err
	}
	sealed, err := seal(ctx, pool, []byte(secret), SealAAD(prefix, akid))
	if err != nil {
		return Credential{}, "", fmt.Errorf("credential of %q: %w", prefix, err)
	}
	return Credential{AccessKeyID: akid, SealedSecret: sealed, Created: now.UTC()}, secret, nil
}

// AddCredential adds c. A key store already holding MaxCredentials live
// credentials refuses (ErrCredentialsFull): the oldest may still be the one
// KMS uses, and retiring it silently would take the store offline. With
// force the oldest beyond MaxCredentials are retired.
func (ks *Keystore) AddCredential(c Credential, force bool) error {
	if len(ks.Credentials) >= MaxCredentials && !force {
		return fmt.Errorf("%w: key store %q: retire %s first (after KMS uses the newer one), or force",
			ErrCredentialsFull, ks.Prefix, ks.Credentials[0].AccessKeyID)
	}
	ks.Credentials = append(ks.Credentials, c)
	if len(ks.Credentials) > MaxCredentials {
		ks.Credentials = ks.Credentials[len(ks.Credentials)-MaxCredentials:]
	}
	return nil
}

// RetireCredential removes the credential akid; ErrNoCredential if there is
// none, ErrLastCredential if it is the only one.
func (ks *Keystore) RetireCredential(akid string) error {
	kept := make([]Credential, 0, len(ks.Credentials))
	for _, c := range ks.Credentials {
		if c.AccessKeyID != akid {
			kept = append(kept, c)
		}
	}
	switch {
	case len(kept) == len(ks.Credentials):
		return fmt.Errorf("%w: key store %q has no credential %q", ErrNoCredential, ks.Prefix, akid)
	case len(kept) == 0:
		return fmt.Errorf("%w (key store %q)", ErrLastCredential, ks.Prefix)
	}
	ks.Credentials = kept
	return nil
}
