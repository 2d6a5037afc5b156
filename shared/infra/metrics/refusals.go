package metrics

// Refusals: every request a service turns away without serving it, by
// reason (issue 25). A refusal is meant to be cheap; this counter and a
// rate-bounded log line (mesh.RefusalLog) are all it costs.

import "github.com/prometheus/client_golang/prometheus"

// Refusal reasons (a closed set).
const (
	// ReasonDeadline: the request could not be answered within its
	// remaining budget (admission), or its deadline passed before the
	// service reached it (expired work dropped unserved).
	ReasonDeadline = "deadline"
	// ReasonQueue: it waited its budget out in a queue, or a queue was full.
	ReasonQueue = "queue"
	// ReasonRateLimit: a per-address, per-credential or connection rate.
	ReasonRateLimit = "rate_limit"
	// ReasonStaleState: the service cannot show its configuration mirrors
	// are current (registry.Cache.Fresh).
	ReasonStaleState = "stale_state"
	// ReasonTimeout: admitted, but no answer came back before the deadline.
	ReasonTimeout = "timeout"
	// ReasonUnavailable: the mesh did not take the request (no stream
	// leader, no responders).
	ReasonUnavailable = "unavailable"
	// ReasonWorkSignature: a keyworker refused a work item that authn did
	// not sign (unsigned, unknown key, stale, replayed: shared/envelope_sig.go).
	ReasonWorkSignature = "work_signature"
)

var knownReasons = set(ReasonDeadline, ReasonQueue, ReasonRateLimit, ReasonStaleState, ReasonTimeout, ReasonUnavailable, ReasonWorkSignature)

// refusals starts with every gateway reason at 0, so a dashboard shows the
// series (and rate() works) before the first refusal.
var refusals = withGatewayReasons(counterVec("refusals_total",
	"Requests refused or dropped without being served, by service and reason: deadline (cannot be answered within its remaining budget, or expired before it was reached), "+
		"queue (waited its budget out in a queue, or a queue was full), rate_limit (address, credential or connection rate), "+
		"stale_state (configuration not current), timeout (admitted, no answer before the deadline), unavailable (the mesh did not take it).",
	"service", "reason"))

func withGatewayReasons(v *prometheus.CounterVec) *prometheus.CounterVec {
	for r := range knownReasons {
		v.WithLabelValues("gateway", r)
	}
	return v
}

// knownServiceSet is knownServices as a set, built once: Refused runs for
// every refused request and must not allocate a map each time.
var knownServiceSet = set(knownServices...)

// Refused counts one request service refused for reason.
func Refused(service, reason string) {
	refusals.WithLabelValues(bounded(knownServiceSet, service), bounded(knownReasons, reason)).Inc()
}
