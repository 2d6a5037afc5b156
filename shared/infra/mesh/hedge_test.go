package mesh

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func TestAckLatencyEstimate(t *testing.T) {
	var a ackLatency
	if got := a.normal(50*time.Millisecond, 100*time.Millisecond); got != 50*time.Millisecond {
		t.Fatalf("cold estimate %v, want the fallback", got)
	}
	for range 100 {
		a.add(2 * time.Millisecond)
		a.add(4 * time.Millisecond)
	}
	// mean ≈ 3 ms, deviation ≈ 1 ms: normal worst ≈ 7 ms, raised to hedgeMin.
	if got := a.normal(50*time.Millisecond, 100*time.Millisecond); got != hedgeMin {
		t.Fatalf("fast sibling: %v, want %v", got, hedgeMin)
	}
	for range 200 {
		a.add(30 * time.Millisecond)
		a.add(50 * time.Millisecond)
	}
	got := a.normal(50*time.Millisecond, 200*time.Millisecond)
	if got < 70*time.Millisecond || got > 90*time.Millisecond {
		t.Fatalf("slow sibling: %v, want about 40 + 4×10 ms", got)
	}
	if got := a.normal(50*time.Millisecond, 60*time.Millisecond); got != 60*time.Millisecond {
		t.Fatalf("not capped at the ceiling: %v", got)
	}
}

func TestHedgesAreRationed(t *testing.T) {
	st := &siblingState{n: 3, until: map[string]time.Time{}, acks: map[string]*ackLatency{}}
	if st.spend() {
		t.Fatal("hedge without a token")
	}
	for range 10 {
		st.earn()
	}
	if !st.spend() || st.spend() {
		t.Fatalf("ten publishes earn one hedge (credit %v)", st.credit)
	}
	for range 10 * (hedgeBurst + 5) {
		st.earn()
	}
	if st.credit > hedgeBurst*hedgeCost {
		t.Fatalf("credit %v above the burst", st.credit)
	}
}

// A sibling that takes a message but does not ack it (a leader that died
// with its subjects still claimed, or a stalled one) is hedged once the
// try has waited longer than that sibling normally needs: the same message
// lands on the next sibling, marked as a failover, long before the try's
// own bound (perTry) or the deadline.
func TestPublishHedgesASilentSibling(t *testing.T) {
	_, nc, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	topo, streams := threeRequestSiblings(ctx, t, js)
	id := idPreferring(t, 1)
	// Sibling 1's subjects leave its stream; a subscriber swallows them
	// instead (interest, so no "no responders", and never an ack).
	cfg := RequestStreamConfig(topo, 1)
	cfg.Subjects = []string{"parked.>"}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	swallowed := make(chan *nats.Msg, 4)
	sub, err := nc.ChanSubscribe(shared.SiblingPrefix(shared.SubjectRequestPrefix, 1)+">", swallowed)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Sibling 1 normally acks in about a millisecond.
	st := stateOf(js)
	st.mu.Lock()
	st.acks[shared.SiblingStream(shared.StreamRequests, 1)] = &ackLatency{n: ackWarm, mean: float64(time.Millisecond), dev: float64(time.Millisecond / 4)}
	hedgesBefore := st.hedges
	st.mu.Unlock()

	const perTry = 20 * time.Second // far beyond the hedge: only the hedge can answer in time
	start := time.Now()
	ack, err := PublishRequest(ctx, js, shared.APIXKSEncrypt, requestMsg(id), perTry)
	if err != nil {
		t.Fatalf("hedged publish: %v", err)
	}
	if waited := time.Since(start); waited >= perTry/2 {
		t.Fatalf("waited %v: not hedged", waited)
	}
	if ack.Stream != shared.SiblingStream(shared.StreamRequests, 2) {
		t.Fatalf("landed on %s, want the next sibling", ack.Stream)
	}
	select {
	case m := <-swallowed:
		if m.Header.Get(shared.HeaderMsgID) != id {
			t.Fatalf("first try carried id %q", m.Header.Get(shared.HeaderMsgID))
		}
	default:
		t.Fatal("the own sibling was never tried")
	}
	m, err := streams[2].GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(HeaderFailover) == "" || m.Header.Get(shared.HeaderMsgID) != id {
		t.Fatalf("hedge copy headers %v", m.Header)
	}
	st.mu.Lock()
	hedges := st.hedges - hedgesBefore
	st.mu.Unlock()
	if hedges != 1 {
		t.Fatalf("%d hedges, want 1", hedges)
	}
}

// idPreferring finds a message id whose own sibling is i.
func idPreferring(t *testing.T, i int) string {
	t.Helper()
	st := &siblingState{n: 3, until: map[string]time.Time{}}
	for k := 0; k < 10000; k++ {
		cand := "req-" + string(rune('a'+k%26)) + string(rune('a'+(k/26)%26)) + string(rune('a'+k/676))
		if st.order(cand, 3, func(int) string { return "x" }, time.Now())[0] == i {
			return cand
		}
	}
	t.Fatal("no id found")
	return ""
}

// Work publishes hedge no earlier than copyHedgeMin, however
// fast their sibling normally is; requests at the sibling's own measure.
func TestHedgeFloorForCopiesTheNextHopKeeps(t *testing.T) {
	st := &siblingState{n: 3, until: map[string]time.Time{}, acks: map[string]*ackLatency{
		"s": {n: ackWarm, mean: float64(2 * time.Millisecond), dev: float64(time.Millisecond)},
	}}
	if got := st.hedgeAfter("s", PublishTry, 0); got != hedgeMin {
		t.Fatalf("request hedge after %v, want %v", got, hedgeMin)
	}
	if got := st.hedgeAfter("s", PublishTry, copyHedgeMin); got != copyHedgeMin {
		t.Fatalf("work hedge after %v, want %v", got, copyHedgeMin)
	}
	if got := st.hedgeAfter("s", 20*time.Millisecond, copyHedgeMin); got != 20*time.Millisecond {
		t.Fatalf("hedge after %v, beyond the try itself", got)
	}
}

// A sibling that acks again after a failure stays tried last for a while:
// its consumers may not pull from its new leader yet.
func TestARecoveredSiblingSettles(t *testing.T) {
	st := &siblingState{n: 3, until: map[string]time.Time{}, acks: map[string]*ackLatency{}}
	st.observe("s", time.Millisecond, nil)
	if st.isDown("s", time.Now()) {
		t.Fatal("a healthy sibling marked down")
	}
	st.observe("s", time.Second, context.DeadlineExceeded)
	st.observe("s", time.Millisecond, nil)
	if !st.isDown("s", time.Now()) || st.isDown("s", time.Now().Add(siblingSettle+siblingHold)) {
		t.Fatalf("recovered sibling: down until %v", st.until["s"])
	}
}
