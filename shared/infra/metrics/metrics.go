// Package metrics defines every Prometheus metric sovkeys exports and the
// small hooks services call to update them. All names start with "sovkeys_"
// and every label takes its values from a closed set (API names, error
// codes, pools and destinations configured by the operator, scope kinds,
// service names): never a request id, a key id, a caller or anything else a
// caller chooses. Values outside the known sets are reported as "other".
//
// Metrics are process-wide by nature (one /metrics page per process), so
// the registry is the one piece of package-level state in sovkeys, as
// expvar's is in the standard library. Every definition is listed in
// Families, which the dashboard test compares with the PromQL it uses.
package metrics

import (
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sovkeys/sovkeys/shared"
)

// Namespace prefixes every sovkeys metric name.
const Namespace = "sovkeys"

// latencyBuckets (seconds) centre on AWS KMS's 250 ms budget for an XKS call.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// hsmBuckets (seconds): SoftHSM answers in microseconds, network HSMs in
// milliseconds.
var hsmBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}

var (
	reg      = prometheus.NewRegistry()
	families []Family
)

// Family describes one metric family.
type Family struct {
	Name   string   // full name, e.g. sovkeys_gateway_requests_total
	Type   string   // counter, gauge or histogram
	Labels []string // label names
	Help   string
}

func define(kind, name, help string, labels []string) prometheus.Opts {
	families = append(families, Family{Name: Namespace + "_" + name, Type: kind, Labels: labels, Help: help})
	return prometheus.Opts{Namespace: Namespace, Name: name, Help: help}
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts(define("counter", name, help, labels)), labels)
	reg.MustRegister(v)
	return v
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts(define("gauge", name, help, labels)), labels)
	reg.MustRegister(v)
	return v
}

func gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts(define("gauge", name, help, nil)))
	reg.MustRegister(g)
	return g
}

func histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	o := define("histogram", name, help, labels)
	v := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: o.Namespace, Name: o.Name, Help: o.Help, Buckets: buckets,
	}, labels)
	reg.MustRegister(v)
	return v
}

// Families returns every sovkeys metric family, sorted by name.
func Families() []Family {
	out := append([]Family(nil), families...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Handler serves the registry in the Prometheus text format, with Go
// runtime and process metrics.
func Handler() http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

func init() {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, sc := range []string{"all", "keystore", "tenant"} {
		killSwitches.WithLabelValues(sc).Set(0)
	}
	for _, svc := range knownServices {
		throttled.WithLabelValues(svc)
	}
	for _, a := range []shared.API{shared.APIXKSEncrypt, shared.APIXKSDecrypt} {
		requestResends.WithLabelValues(api(a)) // at zero until a resend
	}
}

// Closed label sets.
var (
	knownAPIs = set(
		string(shared.APIXKSMetadata), string(shared.APIXKSEncrypt), string(shared.APIXKSDecrypt), string(shared.APIXKSHealth),
		string(shared.APIVSGenerate), string(shared.APIVSDecrypt), string(shared.APIVSConvert),
		"xks.unknown", "vs.unknown", "healthz", "healthcheck", "public-signing-key", "audit-public-key",
	)
	knownCodes = set(
		string(shared.CodeValidation), string(shared.CodeInvalidState), string(shared.CodeInvalidCiphertext),
		string(shared.CodeInvalidKeyUsage), string(shared.CodeAuthenticationFailed), string(shared.CodeAccessDenied),
		string(shared.CodeKeyNotFound), string(shared.CodeInvalidURIPath), string(shared.CodeMethodNotAllowed),
		string(shared.CodeThrottling), string(shared.CodeUnsupportedOperation), string(shared.CodeDependencyTimeout),
		string(shared.CodeInternal),
	)
	knownServices = []string{"gateway", "authn", "keyworker", "audit"}
)

func set(vs ...string) map[string]bool {
	m := make(map[string]bool, len(vs))
	for _, v := range vs {
		m[v] = true
	}
	return m
}

func bounded(known map[string]bool, v string) string {
	if known[v] {
		return v
	}
	return "other"
}

// api bounds an API label.
func api(a shared.API) string { return bounded(knownAPIs, string(a)) }

// code bounds an error code label; "" (no error) is "ok".
func code(c shared.Code) string {
	if c == "" {
		return "ok"
	}
	return bounded(knownCodes, string(c))
}

// maxPools caps the distinct pool labels of a process.
const maxPools = 32

var (
	poolMu sync.Mutex
	pools  = map[string]bool{}
)

// poolLabel bounds a pool label. Pool names are operator configuration (one per
// HSM or partition), but a label must never grow without limit: only names
// that look like identifiers are kept, and at most maxPools of them.
func poolLabel(v string) string {
	if v == "" || len(v) > 64 {
		return "other"
	}
	for _, r := range v {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return "other"
		}
	}
	poolMu.Lock()
	defer poolMu.Unlock()
	if !pools[v] {
		if len(pools) >= maxPools {
			return "other"
		}
		pools[v] = true
	}
	return v
}

// knownDestinations are the audit exporters' names (services/audit).
var knownDestinations = set("central", "tenant")

func statusClass(status int) string {
	if status < 100 || status > 599 {
		return "other"
	}
	return strconv.Itoa(status/100) + "xx"
}

// totals exports counters whose running totals are kept elsewhere (for
// example in a service's stats), as counter samples.
type totals struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	v    map[string]float64
}

func totalsVec(name, help, label string) *totals {
	o := define("counter", name, help, []string{label})
	t := &totals{desc: prometheus.NewDesc(o.Namespace+"_"+o.Name, help, []string{label}, nil), v: map[string]float64{}}
	reg.MustRegister(t)
	return t
}

func (t *totals) set(label string, v float64) {
	t.mu.Lock()
	if v > t.v[label] { // counters never go down (a restarted service starts at 0 again: keep the high mark)
		t.v[label] = v
	} else if _, ok := t.v[label]; !ok {
		t.v[label] = v
	}
	t.mu.Unlock()
}

func (t *totals) Describe(ch chan<- *prometheus.Desc) { ch <- t.desc }

func (t *totals) Collect(ch chan<- prometheus.Metric) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for l, v := range t.v {
		ch <- prometheus.MustNewConstMetric(t.desc, prometheus.CounterValue, v, l)
	}
}

func seconds(d time.Duration) float64 { return d.Seconds() }
