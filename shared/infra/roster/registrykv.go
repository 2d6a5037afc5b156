package roster

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
)

// Registry writes are not a person's to make: key stores, XKS keys and
// tenants change only through authn's registry endpoint, which verifies
// the person's signature and role, applies the quorum policy and audits the
// change before it writes (services/authn/admin.go). RegistryKV is such a
// bucket as a person's tools see it: reads go to the bucket (people may read
// it), writes become signed registry requests (the signer in ctx,
// kwadmin.WithSigner) of the operation Op names.

// PendingError says a change waits for approval by more people.
type PendingError struct {
	ID      string
	Need    int
	Signers []string
}

func (e *PendingError) Error() string {
	return fmt.Sprintf("request %s waits for approval: %d of %d people have signed (%s); another person with the role runs `sovkeys approve %s`",
		e.ID, len(e.Signers), e.Need, strings.Join(e.Signers, ", "), e.ID)
}

// RegistryKV wraps a registry bucket: writes go to authn over NC as
// signed requests for the operation Op returns (API name and parameters,
// e.g. "key.create"; an empty name refuses the write).
type RegistryKV struct {
	jetstream.KeyValue
	NC *nats.Conn
	Op func() (api string, params map[string]string)
}

var _ jetstream.KeyValue = RegistryKV{}

func (k RegistryKV) write(ctx context.Context, mode, key string, value []byte, rev uint64) (uint64, error) {
	api, params := k.Op()
	if api == "" {
		return 0, fmt.Errorf("roster: a registry change outside a named operation (a bug): %s %s", k.Bucket(), key)
	}
	w := kwadmin.RegistryWrite{Bucket: k.Bucket(), Key: key, Mode: mode, Value: value, Revision: rev, API: api, Params: params}
	var resp kwadmin.RegistryWriteResponse
	if err := kwadmin.CallAuthn(ctx, k.NC, kwadmin.EndpointRegistry, w, &resp); err != nil {
		return 0, err
	}
	switch {
	case resp.Pending != "":
		return 0, &PendingError{ID: resp.Pending, Need: resp.Need, Signers: resp.Signers}
	case resp.Conflict:
		// What the bucket itself answers: registry maps it to ErrExists
		// (create) or ErrConflict (update).
		return 0, jetstream.ErrKeyExists
	}
	return resp.Revision, nil
}

// Create is a signed create.
func (k RegistryKV) Create(ctx context.Context, key string, value []byte, _ ...jetstream.KVCreateOpt) (uint64, error) {
	return k.write(ctx, kwadmin.RegistryCreate, key, value, 0)
}

// Update is a signed update at revision rev.
func (k RegistryKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	return k.write(ctx, kwadmin.RegistryUpdate, key, value, rev)
}

// Put is a signed put.
func (k RegistryKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return k.write(ctx, kwadmin.RegistryPut, key, value, 0)
}

// PutString is a signed put.
func (k RegistryKV) PutString(ctx context.Context, key string, value string) (uint64, error) {
	return k.Put(ctx, key, []byte(value))
}

// Delete is a signed delete.
func (k RegistryKV) Delete(ctx context.Context, key string, _ ...jetstream.KVDeleteOpt) error {
	_, err := k.write(ctx, kwadmin.RegistryDelete, key, nil, 0)
	return err
}

// Purge is a signed delete.
func (k RegistryKV) Purge(ctx context.Context, key string, _ ...jetstream.KVDeleteOpt) error {
	return k.Delete(ctx, key)
}
