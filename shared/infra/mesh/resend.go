package mesh

// Resending a request whose answer is overdue (issue 24, 2026-12-07).
//
// A hedge (hedge.go) moves a publish on when its ACK is late. But a stream
// can ack at once and still not answer: when a NATS node dies, the
// consumers whose leaders it held stop delivering until the survivors
// elect new ones (1–3 s measured), while the streams themselves, led
// elsewhere, go on storing. Requests stored there wait for the election,
// far past KMS's 250 ms. So the gateway also times the ANSWER per request
// sibling (answerTook) and, once a request has waited longer than that
// sibling normally needs (ResendAfter), sends it again on another sibling
// (ResendRequest): same Nats-Msg-Id and reply subject, HeaderFailover and
// HeaderRoute set. The first answer wins; the sibling is tried last by
// this process's publishes for siblingHold, so new requests go round the
// stall instead of each being resent.
//
// HeaderRoute asks authn to publish the request's work on the work sibling
// of the request sibling it was consumed from, not the key's own: the
// stall may be in the key's own work consumer too. A request published
// on a detour (its own sibling marked down before the publish) carries it
// as well, for the same reason.
//
// What a resend costs: the stuck copy is still stored and is delivered
// when its consumer has a leader again. By then its deadline has passed
// (a resend happens only with budget left, and elections outlast it): authn
// and the keyworker drop expired work without touching the HSM. If it is
// delivered in time after all, its work is published on its own path: the
// work sibling de-duplicates it when both copies took the same path, and
// otherwise the HSM does the work twice and the second run's answer and
// audit event are refused as duplicates (the keyworker's replay check or
// the audit service), exactly as for a work hedge. Resends share the hedge
// ration, so under overload (every answer slow) they stay under a tenth of
// the requests.

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// HeaderRoute marks a request stored on another sibling than its key's own
// on purpose (a detour or a resend): the next hop keeps its work on the
// same sibling index.
const HeaderRoute = "Sovkeys-Route"

const (
	// resendMin: no resend before this, however fast answers normally are
	// (a resend that early would fire on a scheduling hiccup).
	resendMin = 25 * time.Millisecond
	// resendMax: a resend at the latest this long after the publish, so the
	// copy still has most of KMS's 250 ms.
	resendMax = 100 * time.Millisecond
	// resendRoom: a resend needs at least this much of the deadline left.
	resendRoom = 30 * time.Millisecond
)

// ResendAfter is how long a request stored on stream may wait for its
// answer before it is resent on another sibling: what that sibling
// normally needs for an answer (mean + 4 deviations of the recent ones),
// within [resendMin, resendMax]. 0 when there is nowhere to resend (one
// sibling).
func ResendAfter(js jetstream.JetStream, stream string) time.Duration {
	st := stateOf(js)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.n < 2 {
		return 0
	}
	return max(st.answers[stream].normal(resendMax, resendMax), resendMin)
}

// AnswerTook records that a request stored on stream was answered took
// after its publish began (only answers to requests that were not resent:
// a resent request's time says nothing of a healthy sibling).
func AnswerTook(js jetstream.JetStream, stream string, took time.Duration) {
	st := stateOf(js)
	st.mu.Lock()
	defer st.mu.Unlock()
	// One answer held up by a stall would blow the deviation up and keep
	// resends late for dozens of requests after it: an answer counts as
	// at most twice the latest resend.
	took = min(took, 2*resendMax)
	a := st.answers[stream]
	if a == nil {
		a = &ackLatency{}
		st.answers[stream] = a
	}
	a.add(took)
}

// ResendRequest publishes msg (a request already stored on stream, whose
// answer is overdue) on another request sibling, in the background, and
// marks stream to be tried last for siblingHold. It reports false without
// publishing when no resend is due: one sibling, too little of ctx's
// deadline left, or no hedge token (overload). The copy's publish ends
// with ctx; its outcome is not reported (the original may still be
// answered, and a copy that could not be stored changes nothing).
func ResendRequest(ctx context.Context, js jetstream.JetStream, api shared.API, msg *nats.Msg, stream string) bool {
	st := stateOf(js)
	n := Siblings(js)
	if n < 2 || !roomFor(ctx, 4*resendRoom) || !st.spend() {
		return false
	}
	st.mark(stream, true, time.Now())
	st.mu.Lock()
	st.resends++
	st.mu.Unlock()
	p := siblingPublish{
		key:     msg.Header.Get(jetstream.MsgIDHeader),
		subject: func(i int) string { return shared.RequestSubjectOn(i, api) },
		stream:  func(i int) string { return shared.SiblingStream(shared.StreamRequests, i) },
		perTry:  PublishTry,
		avoid:   stream,
		route:   true,
	}
	m := &nats.Msg{Subject: msg.Subject, Data: msg.Data, Header: cloneHeader(msg.Header)}
	m.Header.Set(HeaderFailover, "1")
	m.Header.Set(HeaderRoute, "1")
	go func() { _, _ = p.publish(ctx, js, m) }()
	return true
}

// Resends is how many requests this process has resent (for tests and the
// benchmark's report).
func Resends(js jetstream.JetStream) int {
	st := stateOf(js)
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.resends
}

// RouteOf is the request sibling a consumed request asks its work to stay
// on: 1 + the sibling index of subject when the message carries
// HeaderRoute, 0 (the key's own sibling) otherwise.
func RouteOf(subject string, h nats.Header) int {
	if h.Get(HeaderRoute) == "" {
		return 0
	}
	i, _, ok := shared.SiblingOfSubject(shared.SubjectRequestPrefix, subject)
	if !ok {
		return 0
	}
	return i + 1
}
