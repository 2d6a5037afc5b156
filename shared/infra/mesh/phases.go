package mesh

// Where a slow answer spent its time (issue 24, 2026-12-07).
//
// Every hop of a request stamps when it passed: authn puts the time the
// request stream stored the request and the time authn received it on the
// work message (HeaderPhases), and the keyworker adds the time the work
// stream stored the work, when it received it, when the HSM was done and
// when the audit event was acked, on its reply. The gateway logs the
// breakdown of an answer slower than it should be. The stamps are
// diagnostics only: not signed, never used for a decision, and they
// carry nothing but times (unix nanoseconds, comma separated).

import (
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// HeaderPhases carries the hop times of a request (above).
const HeaderPhases = "Sovkeys-Phases"

// PhaseNames name the stamps of a complete HeaderPhases, in order.
var PhaseNames = []string{"request_stored", "authn", "work_stored", "keyworker", "hsm_done", "audit_acked"}

// AppendPhases returns h's HeaderPhases value with ts appended ("" when h
// carries none and ts is empty).
func AppendPhases(prev string, ts ...time.Time) string {
	var b strings.Builder
	b.WriteString(prev)
	for _, t := range ts {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(t.UnixNano(), 10))
	}
	return b.String()
}

// PhasesSince renders h's stamps as milliseconds after since
// ("request_stored=1.2 authn=1.9 ..."), "" when h carries none or they do
// not parse.
func PhasesSince(h nats.Header, since time.Time) string {
	v := h.Get(HeaderPhases)
	if v == "" {
		return ""
	}
	parts := strings.Split(v, ",")
	if len(parts) > len(PhaseNames) {
		return ""
	}
	var b strings.Builder
	for i, p := range parts {
		ns, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			return ""
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		ms := float64(time.Unix(0, ns).Sub(since)) / float64(time.Millisecond)
		b.WriteString(PhaseNames[i] + "=" + strconv.FormatFloat(ms, 'f', 1, 64))
	}
	return b.String()
}
