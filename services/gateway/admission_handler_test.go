package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// admissionGateway is a gateway (handlers only, real registry mirrors on a
// real JetStream) with key store "ks" and an admission whose one slot is
// busy and whose mesh takes a second per answer: every XKS call for "ks"
// is refused for its deadline.
func admissionGateway(tb testing.TB) *Service {
	tb.Helper()
	_, nc, js := natstest.Run(tb)
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	topo := mesh.DefaultTopology()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, err := registry.Open(ctx, js, topo)
	if err != nil {
		tb.Fatal(err)
	}
	if err := reg.CreateKeystore(ctx, &registry.Keystore{Prefix: "ks", Pool: "default", Created: time.Now().UTC()}); err != nil {
		tb.Fatal(err)
	}
	s := &Service{cfg: Config{RequestTimeout: time.Second, AdmitWithin: DefaultAdmitWithin}, nc: nc, js: js, log: logger, now: time.Now,
		tracer: noop.NewTracerProvider().Tracer("t")}
	if s.keystores, err = registry.WatchBucket[registry.Keystore](ctx, reg.Keystores, logger, nil); err != nil {
		tb.Fatal(err)
	}
	if s.kill, err = killswitch.Watch(ctx, js, topo, logger); err != nil {
		tb.Fatal(err)
	}
	s.noise = mesh.NewNoiseAuditor(js, shared.AuditServiceGateway, time.Hour, logger, time.Now)
	s.refusals = mesh.NewRefusalLog(shared.AuditServiceGateway, logger, time.Now, 0)
	s.admit = newAdmission(1, 0, time.Now)
	s.admit.busy, s.admit.service = 1, time.Second
	testkit.CheckFor(tb, 10*time.Second, 10*time.Millisecond, func() error {
		if _, ok := s.keystores.Get(registry.KeystoreKey("ks")); !ok || s.fresh() != nil {
			return fmt.Errorf("key store not mirrored yet")
		}
		return nil
	})
	return s
}

const admissionBody = `{"requestMetadata":{"awsPrincipalArn":"a","kmsOperation":"Encrypt","kmsRequestId":"r"},"plaintext":"aGVsbG8=","encryptionAlgorithm":"AES_GCM"}`

// TestAdmissionRefusesAtOnce: a call that cannot be answered within its
// budget gets 429 ThrottlingException from the handler without entering
// the mesh (nothing is published: the slot stays the one busy slot).
func TestAdmissionRefusesAtOnce(t *testing.T) {
	t.Parallel()
	s := admissionGateway(t)
	rec := httptest.NewRecorder()
	s.handleXKS(rec, httptest.NewRequest(http.MethodPost, "/ks/kms/xks/v1/keys/k/encrypt", strings.NewReader(admissionBody)))
	if rec.Code != http.StatusTooManyRequests || !strings.Contains(rec.Body.String(), "ThrottlingException") ||
		!strings.Contains(rec.Body.String(), "time budget") {
		t.Fatalf("got %d %s, want 429 ThrottlingException (time budget)", rec.Code, rec.Body.String())
	}
	if busy, queued := s.admit.stats(); busy != 1 || queued != 0 {
		t.Fatalf("busy %d queued %d after a refusal, want 1 0", busy, queued)
	}
}

// TestVSAdmissionRefusesAtOnce: the volume-secret route has its own
// admission: a call that cannot be answered within its budget gets 429
// with the API's {"message"} body, before its body is read, and leaves the
// XKS slots alone.
func TestVSAdmissionRefusesAtOnce(t *testing.T) {
	t.Parallel()
	s := admissionGateway(t)
	s.admitVS = newAdmission(1, 0, time.Now)
	s.admitVS.busy, s.admitVS.service = 1, 2*time.Second // longer than the 1 s budget
	body := &countingReader{r: strings.NewReader(`{"volume_uuid":"u"}`)}
	rec := httptest.NewRecorder()
	h := instrument(time.Now, http.HandlerFunc(s.handleVS))
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/encryption/i-1/generate-secret", body))
	if rec.Code != http.StatusTooManyRequests || !strings.Contains(rec.Body.String(), `"message"`) ||
		!strings.Contains(rec.Body.String(), "time budget") {
		t.Fatalf("got %d %s, want 429 {message: ... time budget}", rec.Code, rec.Body.String())
	}
	if body.n != 0 {
		t.Fatalf("refused call's body was read (%d bytes)", body.n)
	}
	if busy, queued := s.admitVS.stats(); busy != 1 || queued != 0 {
		t.Fatalf("volume-secret admission busy %d queued %d after a refusal, want 1 0", busy, queued)
	}
	if busy, queued := s.admit.stats(); busy != 1 || queued != 0 {
		t.Fatalf("XKS admission busy %d queued %d, want untouched 1 0", busy, queued)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// BenchmarkXKSRefusal is the gateway's CPU per refused XKS call (the
// handler: path, state, admission, the 429 body; not TLS): to compare with
// an answer's (docs/BENCHMARKS.md).
func BenchmarkXKSRefusal(b *testing.B) {
	s := admissionGateway(b)
	h := instrument(time.Now, http.HandlerFunc(s.handleXKS))
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/ks/kms/xks/v1/keys/k/encrypt", strings.NewReader(admissionBody)))
		if rec.Code != http.StatusTooManyRequests {
			b.Fatalf("status %d", rec.Code)
		}
	}
}
