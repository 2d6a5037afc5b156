package kwadmin

import (
	"context"
	"encoding/json"

	"github.com/sovkeys/sovkeys/shared"
)

// Signed admin requests (shared/infra/roster): a person's CLI puts its
// signer in the context; Call then signs every request body it sends and
// carries the signature in HeaderSignature. The keyworker requires it on
// every endpoint that changes something (Op names which).

// HeaderSignature is the NATS header of a request's signature
// (roster.HeaderSignature).
const HeaderSignature = "Sovkeys-Admin-Signature"

// RequestSigner signs an admin request: op and the body as sent; it returns
// the HeaderSignature value.
type RequestSigner interface {
	SignRequest(op string, body []byte) (string, error)
}

type signerKey struct{}

// WithSigner makes Call sign its requests with s.
func WithSigner(ctx context.Context, s RequestSigner) context.Context {
	return context.WithValue(ctx, signerKey{}, s)
}

func signerOf(ctx context.Context) RequestSigner {
	s, _ := ctx.Value(signerKey{}).(RequestSigner)
	return s
}

// Operations of signed admin requests, as the roster's quorum policy and
// the audit log name them.
const (
	OpKeyCreate     = "xks.key.create"
	OpKeystoreSeal  = "xks.keystore.seal"
	OpIssueCert     = "instance.issue-cert"
	OpApprove       = "request.approve"
	OpReject        = "request.reject"
	opVersionPrefix = "xks.key.version."
	// OpVersionDestroy destroys a key version: quorum by default.
	OpVersionDestroy = opVersionPrefix + VersionDestroy
)

// Op returns the operation a request body for endpoint names, or "" for a
// request that changes nothing (reads, health, service-to-service calls).
func Op(endpoint string, body []byte) string {
	switch endpoint {
	case EndpointKeyCreate:
		return OpKeyCreate
	case EndpointSeal:
		return OpKeystoreSeal
	case EndpointIssueCert:
		return OpIssueCert
	case EndpointApprove:
		return OpApprove
	case EndpointReject:
		return OpReject
	case EndpointRegistry:
		var r RegistryWrite
		if json.Unmarshal(body, &r) != nil {
			return "registry.malformed"
		}
		return RegistryOp(r.API, r.Params)
	case EndpointKeyVersion:
		var r struct {
			Action string `json:"action"`
		}
		if json.Unmarshal(body, &r) != nil || r.Action == VersionList {
			return ""
		}
		return VersionOp(r.Action)
	}
	return ""
}

// VersionOp is the operation of key version action a.
func VersionOp(a string) string { return opVersionPrefix + a }

// Endpoints deciding a request waiting for its quorum.
const (
	EndpointApprove = shared.EndpointApprove
	EndpointReject  = shared.EndpointReject
)

// DecideRequest approves or rejects pending request ID, whose parameters
// have digest Digest (so an approval is for what the approver saw).
type DecideRequest struct {
	ID     string `json:"id"`
	Digest string `json:"digest"`
	Reason string `json:"reason,omitempty"`
}

// DecideResponse says where the request stands after the decision.
type DecideResponse struct {
	ID        string   `json:"id"`
	State     string   `json:"state"`
	Approvals []string `json:"approvals"`
	Need      int      `json:"need"`
	// Result is the applied request's answer (JSON), once it is applied.
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// EndpointRegistry applies a person's change to a registry bucket (key
// stores, XKS keys, tenants): the keyworker verifies the signature and the
// role the change needs, holds it for a quorum where the policy says so,
// audits it and writes the bucket. People may read these buckets, not
// write them.
const EndpointRegistry = shared.EndpointRegistry

// Registry write modes (the jetstream.KeyValue call the change is).
const (
	RegistryCreate = "create"
	RegistryUpdate = "update"
	RegistryPut    = "put"
	RegistryDelete = "delete"
)

// RegistryWrite is one change of a registry bucket, with the operator
// command (API, Params) it belongs to.
type RegistryWrite struct {
	Bucket   string            `json:"bucket"`
	Key      string            `json:"key"`
	Mode     string            `json:"mode"`
	Value    []byte            `json:"value,omitempty"`
	Revision uint64            `json:"revision,omitempty"` // update: the revision read
	API      string            `json:"api"`                // e.g. keystore.create
	Params   map[string]string `json:"params,omitempty"`
}

// RegistryOp is the operation of a registry write for api (and force).
func RegistryOp(api string, params map[string]string) string {
	op := "registry." + api
	if params["force"] == "true" {
		op += ".force"
	}
	return op
}

// RegistryWriteResponse says what the write did: the new revision, or that
// the key exists / the revision was stale (Conflict), or the id of the
// request waiting for approval (Pending).
type RegistryWriteResponse struct {
	Revision uint64   `json:"revision,omitempty"`
	Conflict bool     `json:"conflict,omitempty"`
	Pending  string   `json:"pending,omitempty"`
	Need     int      `json:"need,omitempty"`
	Signers  []string `json:"signers,omitempty"`
}
