package authn

import (
	"context"
	"sync"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// secretCache holds unsealed key-store secrets in memory only. An entry is
// dropped whenever its key store changes in KV.
type secretCache struct {
	mu sync.Mutex
	m  map[string]map[string]string // keystore kv key -> access key id -> secret
}

func newSecretCache() *secretCache { return &secretCache{m: map[string]map[string]string{}} }

func (c *secretCache) get(store, akid string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[store][akid]
	return v, ok
}

func (c *secretCache) put(store, akid, secret string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[store] == nil {
		c.m[store] = map[string]string{}
	}
	c.m[store][akid] = secret
}

func (c *secretCache) dropStore(store string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, store)
}

// credentials returns the live credential named akid of ks, unsealing its
// secret with the pool's HSM on first use.
func (s *Service) credentials(ctx context.Context, ks *registry.Keystore, akid string) ([]Credential, error) {
	storeKey := registry.KeystoreKey(ks.Prefix)
	for _, c := range ks.Credentials {
		if c.AccessKeyID != akid {
			continue
		}
		if secret, ok := s.secrets.get(storeKey, akid); ok {
			return []Credential{{AccessKeyID: akid, SecretAccessKey: secret}}, nil
		}
		var resp kwadmin.SealResponse
		// The answer must be signed by the pool's pinned HSM key: a
		// process holding a keyworker credential cannot answer first.
		uctx, cancel := context.WithTimeout(kwadmin.WithAnswerKeys(ctx, s.answers), 5*time.Second)
		err := kwadmin.Call(uctx, s.nc, ks.Pool, kwadmin.EndpointUnseal,
			kwadmin.SealRequest{Data: c.SealedSecret, AAD: registry.SealAAD(ks.Prefix, akid)}, &resp)
		cancel()
		if err != nil {
			s.log.Error("cannot unseal key store credential", "keystore", ks.Prefix, "access_key_id", akid, "err", err)
			return nil, shared.NewError(shared.CodeDependencyTimeout, "credential store unavailable")
		}
		secret := string(resp.Data)
		clear(resp.Data)
		s.secrets.put(storeKey, akid, secret)
		return []Credential{{AccessKeyID: akid, SecretAccessKey: secret}}, nil
	}
	return nil, shared.NewError(shared.CodeAuthenticationFailed, "unknown access key id %q for this key store", akid)
}

// fleetSize counts the gateways answering a micro ping within a short window.
func (s *Service) fleetSize(ctx context.Context) int {
	inbox := s.nc.NewInbox() // under this user's own inbox prefix
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return 1
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.nc.PublishRequest("$SRV.PING."+shared.ServiceGateway, inbox, nil); err != nil {
		return 1
	}
	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	n := 0
	for {
		if _, err := sub.NextMsgWithContext(wctx); err != nil {
			break
		}
		n++
	}
	return max(n, 1)
}
