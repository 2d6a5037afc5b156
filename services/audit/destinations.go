package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog/witness"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// tenantCacheTTL bounds how long a tenant's audit bucket setting is reused.
const tenantCacheTTL = 30 * time.Second

// setupExporter builds the transparency log exporter: the central bucket
// and, when enabled, tenants' own buckets.
func (s *Service) setupExporter(ctx context.Context) error {
	var central auditlog.Bucket
	switch s.cfg.Central.Backend {
	case BackendS3:
		b, err := auditlog.NewS3Bucket(ctx, s.cfg.Central.S3)
		if err != nil {
			return err
		}
		central = b
	default:
		b, err := auditlog.NewObjectBucket(ctx, s.js, s.cfg.Topology.Replicas)
		if err != nil {
			return err
		}
		central = b
	}
	e := &tlogExporter{s: s, central: central}
	for _, u := range s.cfg.Witnesses {
		e.witnesses = append(e.witnesses, witness.Client{URL: u, HTTP: &http.Client{Timeout: 10 * time.Second}})
	}
	s.countExport("central", func(x *ExportStats) { x.Destination = central.String() })
	if s.cfg.TenantExport.Enabled {
		tenants, err := registry.OpenTenants(ctx, s.js, s.cfg.Topology)
		if err != nil {
			return err
		}
		e.tenants = &tenantBuckets{s: s, tenants: tenants, entries: map[string]tenantEntry{}, buckets: map[string]auditlog.Bucket{}}
	}
	s.tlog = e
	return e.consumer(ctx)
}

// tenantBuckets resolves a tenant scope to the tenant's own bucket.
type tenantBuckets struct {
	s       *Service
	tenants *registry.Tenants

	mu      sync.Mutex
	entries map[string]tenantEntry     // tenant id -> bucket name, cached
	buckets map[string]auditlog.Bucket // bucket name -> client
}

type tenantEntry struct {
	bucket  string
	fetched time.Time
}

func (t *tenantBuckets) bucket(ctx context.Context, sc auditlog.Scope) (auditlog.Bucket, error) {
	if sc.Kind != shared.AuditKindTenant {
		return nil, nil
	}
	now := t.s.now()
	t.mu.Lock()
	e, ok := t.entries[sc.ID]
	t.mu.Unlock()
	if !ok || now.Sub(e.fetched) > tenantCacheTTL {
		tn, _, err := t.tenants.Get(ctx, sc.ID)
		switch {
		case errors.Is(err, registry.ErrNotFound):
			e = tenantEntry{fetched: now}
		case err != nil:
			return nil, fmt.Errorf("audit: tenant %q: %w", sc.ID, err)
		default:
			e = tenantEntry{bucket: tn.AuditBucket, fetched: now}
		}
		t.mu.Lock()
		t.entries[sc.ID] = e
		t.mu.Unlock()
	}
	if e.bucket == "" {
		return nil, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if b, ok := t.buckets[e.bucket]; ok {
		return b, nil
	}
	cfg := t.s.cfg.TenantExport.S3
	cfg.Bucket = e.bucket
	b, err := auditlog.NewS3Bucket(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("audit: tenant %q bucket: %w", sc.ID, err)
	}
	t.buckets[e.bucket] = b
	return b, nil
}

func decodeJSON(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	return d.Decode(v)
}
