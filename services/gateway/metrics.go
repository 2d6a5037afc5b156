package gateway

import (
	"net/http"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// recorder remembers what the handlers answered, for the request metrics:
// the status, the API (noted by the handler once it has parsed the path)
// and the error code and XKS errorName (noted by writeXKSError and
// writeVSError, the only writers of errors).
type recorder struct {
	http.ResponseWriter
	status    int
	api       shared.API
	code      shared.Code
	errorName string
}

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// noteAPI tells the request metrics which API w answers.
func noteAPI(w http.ResponseWriter, api shared.API) {
	if rec, ok := w.(*recorder); ok {
		rec.api = api
	}
}

// noteError tells the request metrics which error w answers.
func noteError(w http.ResponseWriter, code shared.Code, errorName string) {
	if rec, ok := w.(*recorder); ok {
		rec.code, rec.errorName = code, errorName
	}
}

// fixedAPIs name the endpoints that are not XKS or volume-secret calls.
var fixedAPIs = map[string]shared.API{
	"/healthz":               "healthz",
	"/healthcheck":           "healthcheck",
	"/v1/public-signing-key": "public-signing-key",
	"/v1/audit-public-key":   "audit-public-key",
}

// instrument records every request in the gateway's metrics: count by API,
// status class and error, latency by API, and 429s.
func instrument(now func() time.Time, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := now()
		rec := &recorder{ResponseWriter: w, api: fixedAPIs[r.URL.Path]}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		if rec.api == "" {
			rec.api = "other"
		}
		if rec.status == http.StatusTooManyRequests {
			metrics.Throttled("gateway")
		}
		metrics.GatewayRequest(rec.api, rec.status, rec.code, rec.errorName, now().Sub(start))
	})
}
