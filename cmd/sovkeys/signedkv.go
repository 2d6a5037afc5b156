package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// Registry writes are not a person's to make: key stores, XKS keys and
// tenants change only through authn's registry endpoint, which verifies
// the person's signature and role, applies the quorum policy and audits
// the change before it writes (services/authn/admin.go).
// signedKV is the bucket as the CLI sees it: reads go to the bucket (people
// may read it), writes become signed registry requests of the operator
// command under way (operator.audited names it).

// exitPending is the exit status of a command whose change waits for
// approval by more people.
const exitPending = 3

// pendingError says a change waits for approval.
type pendingError struct {
	id      string
	need    int
	signers []string
}

func (e *pendingError) Error() string {
	return fmt.Sprintf("request %s waits for approval: %d of %d people have signed (%s); another person with the role runs `sovkeys approve %s`",
		e.id, len(e.signers), e.need, strings.Join(e.signers, ", "), e.id)
}

// currentOp is the audited operator command under way.
type currentOp struct {
	api    string
	params map[string]string
}

type signedKV struct {
	jetstream.KeyValue
	o *operator
}

// signedKV wraps a registry bucket so its writes are signed requests.
func (o *operator) signedKV(kv jetstream.KeyValue) jetstream.KeyValue {
	return signedKV{KeyValue: kv, o: o}
}

func (k signedKV) write(ctx context.Context, mode, key string, value []byte, rev uint64) (uint64, error) {
	if k.o.op == nil {
		return 0, fmt.Errorf("sovkeys: a registry change outside an audited command (a bug): %s %s", k.Bucket(), key)
	}
	if _, err := k.o.person(); err != nil {
		return 0, err
	}
	w := kwadmin.RegistryWrite{Bucket: k.Bucket(), Key: key, Mode: mode, Value: value, Revision: rev, API: k.o.op.api, Params: k.o.op.params}
	var resp kwadmin.RegistryWriteResponse
	if err := kwadmin.CallAuthn(ctx, k.o.nc, kwadmin.EndpointRegistry, w, &resp); err != nil {
		return 0, err
	}
	switch {
	case resp.Pending != "":
		return 0, &pendingError{id: resp.Pending, need: resp.Need, signers: resp.Signers}
	case resp.Conflict:
		// What the bucket itself answers: registry maps it to ErrExists
		// (create) or ErrConflict (update).
		return 0, jetstream.ErrKeyExists
	}
	return resp.Revision, nil
}

func (k signedKV) Create(ctx context.Context, key string, value []byte, _ ...jetstream.KVCreateOpt) (uint64, error) {
	return k.write(ctx, kwadmin.RegistryCreate, key, value, 0)
}

func (k signedKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	return k.write(ctx, kwadmin.RegistryUpdate, key, value, rev)
}

func (k signedKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return k.write(ctx, kwadmin.RegistryPut, key, value, 0)
}

func (k signedKV) PutString(ctx context.Context, key string, value string) (uint64, error) {
	return k.Put(ctx, key, []byte(value))
}

func (k signedKV) Delete(ctx context.Context, key string, _ ...jetstream.KVDeleteOpt) error {
	_, err := k.write(ctx, kwadmin.RegistryDelete, key, nil, 0)
	return err
}

func (k signedKV) Purge(ctx context.Context, key string, _ ...jetstream.KVDeleteOpt) error {
	return k.Delete(ctx, key)
}

// isPending reports whether err says a change waits for approval.
func isPending(err error) bool {
	var p *pendingError
	return errors.As(err, &p)
}

// openTenants opens the tenant bucket with signed writes.
func (o *operator) openTenants(ctx context.Context) (*registry.Tenants, error) {
	r, err := registry.OpenTenants(ctx, o.js, o.topo)
	if err != nil {
		return nil, err
	}
	r.KV = o.signedKV(r.KV)
	return r, nil
}
