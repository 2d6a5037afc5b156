package keyworker

import (
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
)

// TestAdminHealthReflectsSessions: the pool's health is the HSM round trip
// and the session pool's state: DEGRADED after a lost session was
// replaced, UNAVAILABLE while the device refuses sessions.
func TestAdminHealthReflectsSessions(t *testing.T) {
	f := newXKSFixture(t)
	f.s.cfg = Config{Pool: "default", Model: "SoftHSMv2", HealthTTL: time.Nanosecond}
	f.s.now = time.Now
	status := func() string {
		t.Helper()
		resp, err := f.s.adminHealth(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.(kwadmin.HealthResponse).Status
	}
	if st := status(); st != kwadmin.HealthActive {
		t.Fatalf("fresh pool: %s", st)
	}
	f.faults.Inject(hsm.Fault{Op: "Encrypt", CKR: pkcs11.CKR_SESSION_HANDLE_INVALID, Times: 1})
	if st := status(); st != kwadmin.HealthDegraded {
		t.Fatalf("after a replaced session: %s, want DEGRADED", st)
	}
	f.faults.Inject(hsm.Fault{Op: "Encrypt", CKR: pkcs11.CKR_DEVICE_ERROR, Times: -1}, hsm.Fault{Op: "OpenSession", CKR: pkcs11.CKR_DEVICE_ERROR, Times: -1})
	if st := status(); st != kwadmin.HealthUnavailable {
		t.Fatalf("dead device: %s, want UNAVAILABLE", st)
	}
}
