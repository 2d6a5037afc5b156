package mesh

import (
	"log/slog"
	"sync"
	"time"

	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// RefusalLog counts and logs refusals (metrics.Refused) at a bounded rate:
// under overload a service refuses thousands of requests a second, and a
// line for each would cost more than the refusal itself. The first refusal
// of a reason is logged at once; later ones at most once per interval per
// reason, with how many there were since the last line.
type RefusalLog struct {
	service  string
	log      *slog.Logger
	now      func() time.Time
	interval time.Duration

	mu      sync.Mutex
	reasons map[string]*refusalCount
}

type refusalCount struct {
	last   time.Time // when a line was last written
	logged bool
	since  uint64 // refusals since that line
}

// DefaultRefusalLogInterval bounds how often one reason is logged.
const DefaultRefusalLogInterval = 10 * time.Second

// NewRefusalLog returns a RefusalLog for service (interval 0: the default).
func NewRefusalLog(service string, log *slog.Logger, now func() time.Time, interval time.Duration) *RefusalLog {
	if interval <= 0 {
		interval = DefaultRefusalLogInterval
	}
	return &RefusalLog{service: service, log: log, now: now, interval: interval, reasons: map[string]*refusalCount{}}
}

// Note counts one refusal for reason (a metrics.Reason*) and, if this
// reason has not been logged within the interval, logs it with msg, the
// count since the last line, and attrs (key/value pairs; nothing secret).
// It reports whether a line was written. A nil RefusalLog does nothing.
func (r *RefusalLog) Note(reason, msg string, attrs ...any) bool {
	if r == nil {
		return false // a service built without one (tests)
	}
	metrics.Refused(r.service, reason)
	now := r.now()
	r.mu.Lock()
	c, ok := r.reasons[reason]
	if !ok {
		c = &refusalCount{}
		r.reasons[reason] = c // bounded: reasons are a closed set
	}
	c.since++
	if c.logged && now.Sub(c.last) < r.interval && !now.Before(c.last) {
		r.mu.Unlock()
		return false
	}
	n := c.since
	c.logged, c.last, c.since = true, now, 0
	r.mu.Unlock()
	r.log.Warn(msg, append([]any{"refusal_reason", reason, "refused_since_last_line", n}, attrs...)...)
	return true
}
