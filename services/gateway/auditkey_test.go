package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// The gateway of a volume pool serves the key of the pool that signs audit
// checkpoints, not its own pool's: customers verify their logs against it.
func TestAuditPublicKeyOfSignPool(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx := context.Background()
	pki, err := mesh.EnsureBucket(ctx, js, shared.BucketPKI, "test", mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	for pool, v := range map[string]string{"volumes": "volume-pool-key", "auditors": "audit-pool-key"} {
		if _, err := pki.Put(ctx, auditlog.PKIKey(pool), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	s := &Service{cfg: Config{VolumePool: "volumes", AuditSignPool: "auditors"}, pki: pki}
	rec := httptest.NewRecorder()
	s.handleAuditPublicKey(rec, httptest.NewRequest(http.MethodGet, "/v1/audit-public-key", nil))
	var got vs.PublicKeyResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("status %d body %q: %v", rec.Code, rec.Body.String(), err)
	}
	if string(got.PublicKey) != "audit-pool-key" {
		t.Fatalf("served %q, want the audit sign pool's key", got.PublicKey)
	}
}
