package authn

import (
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/api/xks"
)

// Routing fields come from the request, not from the gateway
//
// The envelope's KeyStore, KeyID and API are the gateway's reading of the
// path. For XKS the path is what the caller signed (SigV4 covers it), so
// authn parses it again and refuses an envelope that disagrees: a
// compromised gateway cannot replay a signed encrypt of key A as a request
// for key B or another key store. Volume-secret paths get the same check
// (the instance id and operation must be the path's).

// deriveXKS checks env's routing fields against its signed path and sets
// the audit scope to the path's key store.
func deriveXKS(env *shared.Envelope, ev *shared.AuditEvent) error {
	route, err := xks.ParsePath(env.Evidence.Path)
	if err != nil && shared.CodeOf(err) != shared.CodeKeyNotFound {
		unauthenticatedScope(ev)
		return err
	}
	ev.Scope, ev.KeyID = route.Prefix, route.KeyID
	if route.Prefix != env.KeyStore || route.KeyID != env.KeyID || route.Op.API() != env.API {
		unauthenticatedScope(ev)
		return shared.NewError(shared.CodeValidation, "request routing does not match the signed request path")
	}
	return nil
}

// unauthenticatedScope moves the audit event of a request refused before
// it could be tied to an existing key store or tenant into the ONE
// unauthenticated scope, so callers cannot create scopes by naming them.
func unauthenticatedScope(ev *shared.AuditEvent) {
	ev.Kind, ev.Scope, ev.KeyID = shared.AuditKindUnauthenticated, "", ""
}

// deriveVS checks env's API and instance id against its path.
func deriveVS(env *shared.Envelope) error {
	instance, op, err := vs.ParsePath(env.Evidence.Path)
	if err != nil {
		return err
	}
	if op.API() != env.API || instance != env.Evidence.InstanceID {
		return shared.NewError(shared.CodeValidation, "request routing does not match the request path")
	}
	return nil
}
