package mesh

// Hedged publishes: failing over on the evidence of time.
//
// Every ack a sibling gives is timed, and each sibling keeps a running
// estimate of how long it normally needs (ackLatency: an exponentially
// weighted mean and mean deviation, mean + 4 deviations ≈ its 99th
// percentile). A publish sends to the key's own sibling and, once that try
// has waited longer than the sibling normally needs, sends the same message
// (same Nats-Msg-Id, HeaderFailover set) to the next sibling too; the first
// ack wins. A sibling that answers "no responders" is left at once. Each
// try gets the remaining budget of the caller's deadline, not a fixed
// slice of it: a slow ack that still comes in time is used, and the hedge,
// not a timeout, is what moves on. A try that has not been answered after
// perTry marks its sibling down (tried last by every publisher of the
// process for siblingHold); its answer, whenever it comes, is still timed
// and clears the mark.
//
// Hedges duplicate work, so they are rationed: each publish earns
// a tenth of a hedge (hedgeCost), at most hedgeBurst hedges are saved.
// Under overload every sibling is slow and hedging would only add load;
// the ration keeps hedges to about a tenth of the publishes then, while a
// dead sibling, which is marked down after its first silent perTry, costs
// only the publishes started in that window.

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

const (
	// ackAlpha weighs each new ack time in a sibling's running estimate
	// (about the last 40 acks count).
	ackAlpha = 0.05
	// ackDevs: mean + ackDevs mean deviations is taken as the sibling's
	// normal worst (about p99 for the long-tailed ack times measured).
	ackDevs = 4
	// ackWarm is how many acks a sibling must have given before its
	// estimate is trusted; until then a hedge waits half of perTry.
	ackWarm = 8
	// hedgeMin: no hedge before this, however fast a sibling normally is
	// (a hedge that early saves nothing against a 250 ms budget, and
	// doubles the work on a short scheduling hiccup).
	hedgeMin = 10 * time.Millisecond
	// Hedges are rationed (above): a publish earns one credit, a hedge
	// costs hedgeCost (a tenth of a hedge per publish), at most hedgeBurst
	// hedges are saved.
	hedgeCost  = 10
	hedgeBurst = 20
	// maxLaunches bounds the tries of one publish (every round tries each
	// sibling at most once).
	maxLaunches = 64
)

// ackLatency is one sibling's running ack-time estimate, in nanoseconds.
type ackLatency struct {
	n         int
	mean, dev float64
}

func (a *ackLatency) add(d time.Duration) {
	x := float64(d)
	a.n++
	if a.n == 1 {
		a.mean, a.dev = x, x/2
		return
	}
	a.dev += ackAlpha * (math.Abs(x-a.mean) - a.dev)
	a.mean += ackAlpha * (x - a.mean)
}

// normal is how long the sibling normally needs for an ack: the wait after
// which a try is hedged, within [hedgeMin, ceiling]; fallback until the
// estimate is warm.
func (a *ackLatency) normal(fallback, ceiling time.Duration) time.Duration {
	if a == nil || a.n < ackWarm {
		return max(min(fallback, ceiling), hedgeMin)
	}
	d := time.Duration(a.mean + ackDevs*a.dev)
	return max(min(d, ceiling), hedgeMin)
}

// copyHedgeMin is the earliest hedge of a work publish. A work message
// stored on two work siblings is done twice (the second run's audit event
// is then refused as a duplicate, its answer an error the gateway usually
// no longer waits for). So work fails over only after a whole silent try
// (PublishTry), where the sibling is most likely gone. Request publishes,
// whose copies the work stream de-duplicates, and audit publishes, whose
// copies the audit service numbers once whichever lands first (its copy
// watch, 2026-12-07), hedge at what their sibling normally needs.
const copyHedgeMin = PublishTry

// observe records the outcome of one try on stream: an ack's time, or a
// failure that shows no leader answers there.
func (st *siblingState) observe(stream string, took time.Duration, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.silentAt == nil {
		st.silentAt, st.ackedAt = map[string]time.Time{}, map[string]time.Time{}
	}
	if err == nil {
		a := st.acks[stream]
		if a == nil {
			a = &ackLatency{}
			st.acks[stream] = a
		}
		a.add(took)
		now := time.Now()
		if until, down := st.until[stream]; down && st.silentAt[stream].After(st.ackedAt[stream]) {
			// Back after a failure: a new leader acks before its
			// consumers pull from it again (up to consumeExpiry), so
			// the sibling stays tried last a little longer (once: later
			// acks do not extend it, or a sibling that keeps acking
			// would stay marked for good).
			st.until[stream] = later(until, now.Add(siblingSettle))
		}
		st.ackedAt[stream] = now
		return
	}
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		now := time.Now()
		st.until[stream] = now.Add(siblingHold) // no leader answered there
		st.silentAt[stream] = now
	}
}

// siblingSettle: how long a sibling that answers again after a failure
// stays tried last (a new stream leader acks at once; its consumers' pulls
// reach it within consumeExpiry, and a consumer's own leader may be elected
// a little later).
const siblingSettle = 2 * consumeExpiry

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// inProcess reports a publish refused because a message with its id is
// still being stored by the clustered stream.
func inProcess(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrDuplicateInProcess
}

// hedgeAfter is how long a try on stream may wait before it is hedged.
func (st *siblingState) hedgeAfter(stream string, perTry, floor time.Duration) time.Duration {
	st.mu.Lock()
	defer st.mu.Unlock()
	return max(st.acks[stream].normal(perTry/2, perTry), min(floor, perTry))
}

// earn adds a publish's share of a hedge token.
func (st *siblingState) earn() {
	st.mu.Lock()
	st.credit = min(st.credit+1, hedgeBurst*hedgeCost)
	st.mu.Unlock()
}

// spend takes a hedge token if there is one.
func (st *siblingState) spend() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.credit < hedgeCost {
		return false
	}
	st.credit -= hedgeCost
	st.hedges++
	return true
}

type tryResult struct {
	i   int
	ack *jetstream.PubAck
	err error
}

// publishHedged is publish across n > 1 siblings with a de-duplication id
// (above). order is the siblings' preference for this message.
func (p siblingPublish) publishHedged(ctx context.Context, js jetstream.JetStream, st *siblingState, msg *nats.Msg, order []int) (*jetstream.PubAck, error) {
	st.earn()
	dl, hasDeadline := ctx.Deadline()
	results := make(chan tryResult, maxLaunches) // tries never block, also after the call returned
	n := len(order)
	tried := make([]bool, shared.MaxSiblings) // by sibling: an earlier try had an unknown outcome
	launched := make([]bool, n)               // by position in order, this round
	pending, launches := 0, 0
	perTry := p.perTry
	var lastErr error

	launch := func(k int, after time.Duration) {
		i := order[k]
		launched[k] = true
		pending++
		launches++
		m := &nats.Msg{Subject: p.subject(i), Data: msg.Data, Header: cloneHeader(msg.Header)}
		if k > 0 || p.avoid != "" { // a resend is a copy wherever it lands
			m.Header.Set(HeaderFailover, "1")
		} else {
			m.Header.Del(HeaderFailover)
		}
		// The try outlives the call when a hedge won: its answer still
		// tells how the sibling is doing. It is bounded by the caller's
		// deadline (the remaining budget), or perTry without one.
		base := context.WithoutCancel(ctx)
		var tctx context.Context
		var cancel context.CancelFunc
		if hasDeadline {
			tctx, cancel = context.WithDeadline(base, dl)
		} else {
			tctx, cancel = context.WithTimeout(base, perTry)
		}
		stream := p.stream(i)
		go func() {
			defer cancel()
			if after > 0 && sleep(tctx, after) != nil {
				results <- tryResult{i: i, err: tctx.Err()}
				return
			}
			silent := time.AfterFunc(p.perTry, func() { st.markSilent(stream, time.Now()) })
			start := time.Now()
			ack, err := js.PublishMsg(tctx, m)
			silent.Stop()
			st.observe(stream, time.Since(start), err)
			results <- tryResult{i: i, ack: ack, err: err}
		}()
	}
	next := func() int { // the next sibling not tried this round, or -1
		for k := range n {
			if !launched[k] {
				return k
			}
		}
		return -1
	}
	hedge := time.NewTimer(st.hedgeAfter(p.stream(order[0]), perTry, p.hedgeFloor))
	defer hedge.Stop()
	launch(0, 0)
	lastLaunch := time.Now()
	for round := 0; ; {
		select {
		case <-ctx.Done():
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			return nil, lastErr
		case <-hedge.C:
			k := next()
			if k < 0 {
				continue
			}
			// Without a token, a try left unanswered for perTry is given
			// up on as before hedging: the next sibling is tried.
			if waited := time.Since(lastLaunch); waited < p.perTry && !st.spend() {
				hedge.Reset(p.perTry - waited)
				continue
			}
			launch(k, 0)
			lastLaunch = time.Now()
			hedge.Reset(st.hedgeAfter(p.stream(order[k]), perTry, p.hedgeFloor))
		case r := <-results:
			pending--
			if r.err == nil {
				if p.accept != nil {
					if aerr := p.accept(r.ack, tried[r.i]); aerr != nil {
						return nil, aerr
					}
				}
				return r.ack, nil
			}
			if !transientPublish(r.err) {
				return nil, r.err
			}
			lastErr = r.err
			if !errors.Is(r.err, nats.ErrNoResponders) && !errors.Is(r.err, jetstream.ErrNoStreamResponse) {
				tried[r.i] = true // may be stored: a later ack there is "again"
			}
			if inProcess(r.err) && launches+n < maxLaunches && roomFor(ctx, publishPause+hedgeMin) {
				// This id is being stored on that sibling right now (a copy
				// published by another hop, or an earlier try): its outcome
				// decides, so ask the same sibling again; another sibling
				// would store a second copy.
				for k, i := range order {
					if i == r.i {
						launch(k, publishPause)
					}
				}
				continue
			}
			if hasDeadline && time.Until(dl) <= 0 {
				return nil, lastErr
			}
			if k := next(); k >= 0 {
				launch(k, 0) // a failure is evidence enough: no token needed
				lastLaunch = time.Now()
				hedge.Reset(st.hedgeAfter(p.stream(order[k]), perTry, p.hedgeFloor))
				continue
			}
			if pending > 0 {
				continue
			}
			// Every sibling failed this round: pause, then the next.
			round++
			if !hasDeadline && round >= noDeadlineRounds {
				return nil, lastErr
			}
			if !hasDeadline {
				perTry *= 2 // nobody waits on a deadline: a slow stream gets longer tries
			}
			if hasDeadline && !roomFor(ctx, publishPause+p.perTry) {
				return nil, lastErr
			}
			if launches+n > maxLaunches || sleep(ctx, publishPause) != nil {
				return nil, lastErr
			}
			order = p.order(st, Siblings(js), time.Now())
			if len(order) != n {
				return nil, lastErr // the siblings changed under this call
			}
			clear(launched)
			launch(0, 0)
			lastLaunch = time.Now()
			hedge.Reset(st.hedgeAfter(p.stream(order[0]), perTry, p.hedgeFloor))
		}
	}
}

func cloneHeader(h nats.Header) nats.Header {
	out := make(nats.Header, len(h)+1)
	for k, v := range h {
		out[k] = append([]string(nil), v...)
	}
	return out
}
