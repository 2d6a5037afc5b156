package gateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// TestInstrumentRecordsAPIAndError: the middleware labels a request with
// the API its handler noted and the error writeXKSError wrote, never with
// the path (which carries the caller's key id).
func TestInstrumentRecordsAPIAndError(t *testing.T) {
	h := instrument(time.Now, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		noteAPI(w, shared.APIXKSDecrypt)
		writeXKSError(w, shared.NewError(shared.CodeInvalidCiphertext, "bad"))
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/kms/xks/v1/keys/instrument-test-key-id/decrypt", nil))
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("status %d", rec.Code)
	}
	throttle := instrument(time.Now, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeXKSError(w, shared.NewError(shared.CodeThrottling, "slow down"))
	}))
	throttle.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/x", nil))

	page := httptest.NewRecorder()
	metrics.Handler().ServeHTTP(page, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	b, _ := io.ReadAll(page.Result().Body)
	text := string(b)
	for _, want := range []string{
		`sovkeys_gateway_requests_total{api="xks.decrypt",code="invalid_ciphertext",error_name="InvalidCiphertextException",status_class="4xx"} 1`,
		`sovkeys_gateway_requests_total{api="other",code="throttling",error_name="ThrottlingException",status_class="4xx"} 1`,
		`sovkeys_throttled_total{service="gateway"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(text, "instrument-test-key-id") {
		t.Error("the key id from the path reached /metrics")
	}
}
