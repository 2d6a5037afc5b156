package main

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// The CLI writes key stores, XKS keys and tenants only as signed requests
// to authn (roster.RegistryKV), naming the audited command under way.

// exitPending is the exit status of a command whose change waits for
// approval by more people.
const exitPending = 3

// currentOp is the audited operator command under way.
type currentOp struct {
	api    string
	params map[string]string
}

// signedKV wraps a registry bucket so its writes are signed requests of
// the command under way (operator.audited sets it).
func (o *operator) signedKV(kv jetstream.KeyValue) jetstream.KeyValue {
	return roster.RegistryKV{KeyValue: kv, NC: o.nc, Op: func() (string, map[string]string) {
		if o.op == nil || o.signer == nil {
			return "", nil
		}
		return o.op.api, o.op.params
	}}
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

// isPending reports whether err says a change waits for approval.
func isPending(err error) bool {
	var p *roster.PendingError
	return errors.As(err, &p)
}
