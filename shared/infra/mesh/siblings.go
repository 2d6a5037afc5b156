package mesh

// Sibling streams: riding out the loss of a stream leader.
//
// A JetStream stream has one leader; when its node dies, publishes to it
// fail until the survivors elect a new one (seconds: the raft election
// timeout), far past the 250 ms KMS gives a call. So every request, work
// and audit stream may have siblings (shared.MaxSiblings at most): streams
// of the same configuration on disjoint subjects whose leaders sit on
// different nodes (SpreadLeaders). A publisher picks a sibling from the
// message's id (so every hop of one request prefers the same index, and a
// retry the same stream), and when a sibling has not answered within what
// it normally needs it publishes the same message (same Nats-Msg-Id) on the
// next one too (hedge.go); a sibling silent for a whole try is marked down
// for a while. Consumers read every sibling.
//
// What a failover may cost: a message whose ack was lost may be stored in
// both siblings. A duplicate request is dropped at the next hop (its work
// is published under the same id on the same work sibling, whose
// de-duplication drops it); a duplicate audit event carries HeaderFailover
// or arrives late, and the audit service checks such events against the
// records it has committed (services/audit).

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// PublishTry is how long a try on one sibling of the request path may stay
// unanswered before that sibling is marked down (and, with one stream, is
// tried again): short enough that a failover fits KMS's 250 ms with the
// rest of the call, long enough for a loaded node's ack. With siblings the
// hedge (hedge.go) moves on sooner, at what the sibling normally needs.
const PublishTry = 100 * time.Millisecond

// siblingHold is how long a sibling that failed a try is tried last.
const siblingHold = 3 * time.Second

// publishPause is the wait between rounds over every sibling.
const publishPause = 20 * time.Millisecond

// noDeadlineRounds bounds the rounds of a publish whose context has no
// deadline; each round doubles the per-try bound (200 ms to 3.2 s for an
// audit event: about 12 s in all on one sibling).
const noDeadlineRounds = 5

// siblingState is what a process knows of one deployment's siblings: how
// many there are (discovered when a service binds its streams) and which
// are down. Keyed by the JetStream handle, so two meshes in one process
// (tests) do not mix.
type siblingState struct {
	mu    sync.Mutex
	n     int
	until map[string]time.Time   // stream -> tried last until
	acks  map[string]*ackLatency // stream -> its ack times (hedge.go)
	// silentAt and ackedAt: the last try on a stream that failed or went
	// unanswered, and its last ack. A stream silent since its last ack is
	// dead (no leader) and tried after every other, also after siblings
	// marked for other reasons (a resend, settling after a recovery).
	silentAt, ackedAt map[string]time.Time
	// answers: request stream -> the time its requests take to be
	// answered (resend.go).
	answers map[string]*ackLatency
	// credit rations hedges and resends; hedges and resends count them
	// (hedge.go, resend.go).
	credit  int
	hedges  int
	resends int
}

var siblings sync.Map // jetstream.JetStream -> *siblingState

func stateOf(js jetstream.JetStream) *siblingState {
	if v, ok := siblings.Load(js); ok {
		return v.(*siblingState)
	}
	v, _ := siblings.LoadOrStore(js, &siblingState{n: 1, until: map[string]time.Time{}, acks: map[string]*ackLatency{},
		answers: map[string]*ackLatency{}, silentAt: map[string]time.Time{}, ackedAt: map[string]time.Time{},
		credit: hedgeBurst * hedgeCost})
	return v.(*siblingState)
}

// setSiblings records that js's deployment has n siblings of each stream
// (at least what the caller bound).
func setSiblings(js jetstream.JetStream, n int) {
	st := stateOf(js)
	st.mu.Lock()
	st.n = max(st.n, min(n, shared.MaxSiblings))
	st.mu.Unlock()
}

// Siblings is the number of sibling streams js's deployment publishes
// across (1 until a service has bound its streams).
func Siblings(js jetstream.JetStream) int {
	st := stateOf(js)
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.n
}

func (st *siblingState) isDown(stream string, now time.Time) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return now.Before(st.until[stream])
}

// isDeadLocked reports whether stream is marked and has been silent since its
// last ack. Callers hold st.mu.
func (st *siblingState) isDeadLocked(stream string, now time.Time) bool {
	return now.Before(st.until[stream]) && st.silentAt[stream].After(st.ackedAt[stream])
}

// markSilent marks stream down because a try there failed or went
// unanswered.
func (st *siblingState) markSilent(stream string, now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.silentAt == nil {
		st.silentAt, st.ackedAt = map[string]time.Time{}, map[string]time.Time{}
	}
	st.until[stream] = now.Add(siblingHold)
	st.silentAt[stream] = now
}

func (st *siblingState) mark(stream string, down bool, now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if down {
		st.until[stream] = now.Add(siblingHold)
	} else if _, ok := st.until[stream]; ok {
		delete(st.until, stream)
	}
}

// order is the sequence of siblings to try for key: from the key's own
// sibling on, those not marked down first.
func (st *siblingState) order(key string, n int, stream func(int) string, now time.Time) []int {
	if n == 1 {
		return onlyFirst // one stream: nothing to choose (the hot path of a single node)
	}
	return st.orderFrom(ownSibling(key, n), n, stream, now)
}

// ownSibling is key's own sibling of n.
func ownSibling(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// orderFrom is order starting from sibling first.
// Marked siblings come after the others, and dead ones (silent since
// their last ack) after every live one: when every sibling is marked (a
// node lost while resends marked the others, 2026-12-07) the order must
// still avoid the one that does not answer at all.
func (st *siblingState) orderFrom(first, n int, stream func(int) string, now time.Time) []int {
	up := make([]int, 0, n)
	var down, dead []int
	st.mu.Lock()
	for k := range n {
		i := (first + k) % n
		switch s := stream(i); {
		case st.isDeadLocked(s, now):
			dead = append(dead, i)
		case now.Before(st.until[s]):
			down = append(down, i)
		default:
			up = append(up, i)
		}
	}
	st.mu.Unlock()
	return append(append(up, down...), dead...)
}

var onlyFirst = []int{0}

// HeaderFailover marks a message published on another sibling than the
// first one tried: an earlier copy may be stored there too.
const HeaderFailover = "Sovkeys-Failover"

// siblingPublish is one publish across siblings. subject and stream name
// sibling i's subject and stream; accept sees each ack (again: this
// sibling was tried before in this call with an unknown outcome) and may
// turn it into an error that ends the call.
type siblingPublish struct {
	key     string
	subject func(i int) string
	stream  func(i int) string
	perTry  time.Duration
	// hedgeFloor: no hedge before it (hedge.go: copyHedgeMin for work);
	// 0 for hedgeMin.
	hedgeFloor time.Duration
	accept     func(ack *jetstream.PubAck, again bool) error
	// from is 1 + the sibling to start from (0: the key's own); avoid
	// names a stream never tried (resend.go: where the original is
	// stored). route: a publish that does not start on the key's own
	// sibling carries HeaderRoute (resend.go).
	from  int
	avoid string
	route bool
}

// order is the siblings to try for p's message, n in all.
func (p siblingPublish) order(st *siblingState, n int, now time.Time) []int {
	if n == 1 {
		return onlyFirst
	}
	first := ownSibling(p.key, n)
	if p.from > 0 && p.from <= n {
		first = p.from - 1
	}
	order := st.orderFrom(first, n, p.stream, now)
	if p.avoid != "" {
		kept := order[:0]
		for _, i := range order {
			if p.stream(i) != p.avoid {
				kept = append(kept, i)
			}
		}
		order = kept
	}
	return order
}

// publish sends msg to a sibling and waits for its ack. With several
// siblings and a de-duplication id it hedges (hedge.go): the next sibling
// is sent the same message once a try has waited longer than its sibling
// normally needs. With one stream it tries it round after round, while
// ctx's deadline leaves room for a try (noDeadlineRounds without a
// deadline). A sibling that answers "no responders" (no leader holds its subjects:
// nothing was stored) is left at once and marked down. A try that times
// out, or finds the same message id still being stored, has an unknown
// outcome: the same sibling is tried once more (a slow leader, or one
// that has just died and now answers "no responders") before the next.
// Without a de-duplication id there is one attempt: a retry could enqueue
// twice.
func (p siblingPublish) publish(ctx context.Context, js jetstream.JetStream, msg *nats.Msg) (*jetstream.PubAck, error) {
	st := stateOf(js)
	n := Siblings(js)
	order := p.order(st, n, time.Now())
	if len(order) == 0 {
		return nil, nats.ErrNoResponders // every sibling avoided: nowhere to publish
	}
	if p.route && n > 1 && order[0] != ownSibling(p.key, n) {
		msg.Header.Set(HeaderRoute, "1")
	}
	if msg.Header.Get(jetstream.MsgIDHeader) == "" {
		msg.Subject = p.subject(order[0])
		return js.PublishMsg(ctx, msg)
	}
	if n > 1 {
		return p.publishHedged(ctx, js, st, msg, order)
	}
	_, hasDeadline := ctx.Deadline()
	perTry := p.perTry
	tried := make([]bool, n) // outcome unknown on these
	var lastErr error
	attempts := 0
	for round := 0; ; round++ {
		if !hasDeadline && round > 0 {
			perTry *= 2 // nobody waits on a deadline: a slow stream gets longer tries
		}
		for _, i := range order {
			for try := 0; try < unknownTries; try++ {
				if attempts > 0 {
					if hasDeadline && !roomFor(ctx, perTry) {
						return nil, lastErr
					}
					if try > 0 && sleep(ctx, publishPause) != nil {
						return nil, lastErr
					}
				}
				attempts++
				if i != order[0] || p.avoid != "" {
					msg.Header.Set(HeaderFailover, "1")
				} else {
					msg.Header.Del(HeaderFailover)
				}
				msg.Subject = p.subject(i)
				tctx, cancel := context.WithTimeout(ctx, perTry)
				ack, err := js.PublishMsg(tctx, msg)
				cancel()
				if err == nil {
					st.mark(p.stream(i), false, time.Now())
					if p.accept != nil {
						if aerr := p.accept(ack, tried[i]); aerr != nil {
							return nil, aerr
						}
					}
					return ack, nil
				}
				if !transientPublish(err) || ctx.Err() != nil {
					return nil, err
				}
				lastErr = err
				if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
					break // nothing stored, no leader: the next sibling
				}
				tried[i] = true
			}
			st.markSilent(p.stream(i), time.Now())
		}
		if !hasDeadline && round+1 >= noDeadlineRounds {
			return nil, lastErr
		}
		if hasDeadline && !roomFor(ctx, publishPause+perTry) {
			return nil, lastErr
		}
		if sleep(ctx, publishPause) != nil {
			return nil, lastErr
		}
	}
}

// unknownTries is how many tries with an unknown outcome one sibling gets
// in a round before the next sibling is tried.
const unknownTries = 2

// roomFor reports whether ctx's deadline leaves at least a quarter of d.
func roomFor(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) >= d/4
}

// PublishRequest publishes a gateway's request for api on a request-stream
// sibling, failing over within ctx's deadline (msg carries the request id
// as Nats-Msg-Id).
func PublishRequest(ctx context.Context, js jetstream.JetStream, api shared.API, msg *nats.Msg, perTry time.Duration) (*jetstream.PubAck, error) {
	return siblingPublish{
		key:     msg.Header.Get(jetstream.MsgIDHeader),
		subject: func(i int) string { return shared.RequestSubjectOn(i, api) },
		stream:  func(i int) string { return shared.SiblingStream(shared.StreamRequests, i) },
		perTry:  perTry,
		route:   true,
	}.publish(ctx, js, msg)
}

// PublishWork publishes authorised work for pool on a sibling of the
// pool's work stream, like PublishRequest.
func PublishWork(ctx context.Context, js jetstream.JetStream, pool string, api shared.API, msg *nats.Msg, perTry time.Duration) (*jetstream.PubAck, error) {
	return PublishWorkFrom(ctx, js, pool, api, msg, perTry, 0)
}

// PublishWorkFrom is PublishWork starting from sibling from-1 instead of
// the key's own (from 0: the key's own; RouteOf gives it for a request
// that carries HeaderRoute).
func PublishWorkFrom(ctx context.Context, js jetstream.JetStream, pool string, api shared.API, msg *nats.Msg, perTry time.Duration, from int) (*jetstream.PubAck, error) {
	return siblingPublish{
		from:       from,
		key:        msg.Header.Get(jetstream.MsgIDHeader),
		subject:    func(i int) string { return shared.WorkSubjectOn(i, pool, api) },
		stream:     func(i int) string { return shared.SiblingStream(shared.WorkStream(pool), i) },
		perTry:     perTry,
		hedgeFloor: copyHedgeMin,
	}.publish(ctx, js, msg)
}

// jsErrDuplicateInProcess is JSStreamDuplicateMessageConflict: a message
// with this id is still being stored by the clustered stream (an earlier
// try that timed out). nats.go does not name it.
const jsErrDuplicateInProcess jetstream.ErrorCode = 10158

// transientPublish reports the publish failures a retry may cure.
func transientPublish(err error) bool {
	if IsQueueFull(err) {
		return false // answered at once: ThrottlingException
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrDuplicateInProcess {
		return true // an earlier try is being stored: its outcome decides
	}
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrConnectionDraining)
}

// SiblingsOf binds sibling 0 of a stream with ensure (which may create it
// or wait for Bootstrap) and then every further sibling that exists (or,
// below want, ensures it too), in index order up to the first missing one.
// The count found is recorded for js's publishers.
func SiblingsOf(ctx context.Context, js jetstream.JetStream, want int, base string, ensure func(ctx context.Context, i int) (jetstream.Stream, error)) ([]jetstream.Stream, error) {
	var out []jetstream.Stream
	for i := range shared.MaxSiblings {
		if i < max(want, 1) {
			s, err := ensure(ctx, i)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
			continue
		}
		s, err := js.Stream(ctx, shared.SiblingStream(base, i))
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			break
		}
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	setSiblings(js, len(out))
	return out, nil
}

// CreateConsumers creates (or updates) the durable cfg on every sibling
// stream, in order.
func CreateConsumers(ctx context.Context, streams []jetstream.Stream, cfg jetstream.ConsumerConfig) ([]jetstream.Consumer, error) {
	out := make([]jetstream.Consumer, 0, len(streams))
	for _, s := range streams {
		c, err := s.CreateOrUpdateConsumer(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, s.CachedInfo().Config.Name, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// ShareOf is one sibling's part of a budget split over n siblings (at
// least 1), so the siblings together never exceed it while budget >= n.
func ShareOf(budget, n int) int { return max(budget/max(n, 1), 1) }

// ConsumeGroup is Consume running on every sibling's consumer.
type ConsumeGroup struct{ ccs []jetstream.ConsumeContext }

// consumeExpiry bounds each pull request (heartbeats every half of it).
// A consumer whose leader moved (its node died, or SpreadLeaders stepped
// it over) never sees the pull requests the old leader held: the client
// notices and pulls again only when a request expires or its heartbeats
// stop, 30 s with nats.go's defaults. Short pulls make that about a second.
const consumeExpiry = time.Second

// ConsumeAll starts h on every consumer with the same options (pull
// requests of consumeExpiry unless opts say otherwise).
func ConsumeAll(cons []jetstream.Consumer, h jetstream.MessageHandler, opts ...jetstream.PullConsumeOpt) (*ConsumeGroup, error) {
	g := &ConsumeGroup{}
	opts = append([]jetstream.PullConsumeOpt{jetstream.PullExpiry(consumeExpiry)}, opts...)
	for _, c := range cons {
		cc, err := c.Consume(h, opts...)
		if err != nil {
			g.Stop()
			return nil, err
		}
		g.ccs = append(g.ccs, cc)
	}
	return g, nil
}

// Stop stops every consumer at once; Drain lets each finish what it holds.
func (g *ConsumeGroup) Stop() {
	for _, cc := range g.ccs {
		cc.Stop()
	}
}

// Drain stops pulling and delivers what was pulled.
func (g *ConsumeGroup) Drain() {
	for _, cc := range g.ccs {
		cc.Drain()
	}
}

// Wait returns when every consumer is closed.
func (g *ConsumeGroup) Wait() {
	for _, cc := range g.ccs {
		<-cc.Closed()
	}
}
