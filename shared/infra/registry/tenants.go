package registry

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// Tenant status values.
const (
	TenantEnabled  = "ENABLED"
	TenantDisabled = "DISABLED"
)

// Tenant is a customer of the volume-secret API: by default one VPC. Its
// master key lives only as the EKT named EKTName (several tenants may share
// one), in the pool's HSM hierarchy.
type Tenant struct {
	ID          string    `json:"id"`
	EKTName     string    `json:"ekt_name"`
	Pool        string    `json:"pool"`
	AuditBucket string    `json:"audit_bucket,omitempty"`
	Account     string    `json:"account,omitempty"`
	RoleARN     string    `json:"role_arn,omitempty"`
	AuthMethods []string  `json:"auth_methods"`
	Status      string    `json:"status"`
	Created     time.Time `json:"created"`

	// AWS instance identity: the region of the tenant's instances (default:
	// authn's --aws-region) and whether the caller's source IP must be one
	// of the instance's private addresses.
	Region        string `json:"region,omitempty"`
	CheckSourceIP bool   `json:"check_source_ip,omitempty"`

	// RequireRequestSignatures: certificate callers must sign each request
	// with their instance key (RFC 9421, vs.SignRequest). Absent in
	// tenants made before 2026-12-07: they keep accepting unsigned calls.
	RequireRequestSignatures bool `json:"require_request_signatures,omitempty"`
}

// ValidTenantID reports whether id can name a tenant: 1-64 characters of
// [A-Za-z0-9_-] (a VPC id such as vpc-0abc fits).
func ValidTenantID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Tenants reads and writes the tenant bucket.
type Tenants struct {
	KV jetstream.KeyValue
}

// OpenTenants declares (if needed) and opens the tenant bucket.
func OpenTenants(ctx context.Context, js jetstream.JetStream, t mesh.Topology) (*Tenants, error) {
	kv, err := mesh.EnsureBucket(ctx, js, shared.BucketTenants, "sovkeys: volume-secret tenants", t)
	if err != nil {
		return nil, err
	}
	return &Tenants{KV: kv}, nil
}

// Get returns a tenant and its revision.
func (r *Tenants) Get(ctx context.Context, id string) (*Tenant, uint64, error) {
	var tn Tenant
	rev, err := get(ctx, r.KV, id, &tn)
	if err != nil {
		return nil, 0, err
	}
	return &tn, rev, nil
}

// Create stores a new tenant; ErrExists if the id is taken.
func (r *Tenants) Create(ctx context.Context, tn *Tenant) error { return create(ctx, r.KV, tn.ID, tn) }

// Update writes tn if the entry is still at rev.
func (r *Tenants) Update(ctx context.Context, tn *Tenant, rev uint64) error {
	return update(ctx, r.KV, tn.ID, tn, rev)
}

// List returns every tenant.
func (r *Tenants) List(ctx context.Context) ([]Tenant, error) { return list[Tenant](ctx, r.KV, "") }
