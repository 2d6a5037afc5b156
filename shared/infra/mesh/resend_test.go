package mesh

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// A request stored on a sibling whose answer is overdue (its consumer
// stalled) is resent on the next sibling, marked as a failover and asked
// to keep its work on that path; the stalled sibling is then avoided, and
// requests that detour round it carry the route too, while a request on
// its own sibling does not.
func TestResendGoesRoundAStalledSibling(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topo, streams := threeRequestSiblings(ctx, t, js)
	if _, err := EnsureWorkStreams(ctx, js, "p", topo); err != nil {
		t.Fatal(err)
	}
	stalled := shared.SiblingStream(shared.StreamRequests, 1)
	id := idPreferring(t, 1)
	msg := requestMsg(id)
	ack, err := PublishRequest(ctx, js, shared.APIXKSEncrypt, msg, PublishTry)
	if err != nil || ack.Stream != stalled {
		t.Fatalf("publish: %+v %v", ack, err)
	}
	if msg.Header.Get(HeaderRoute) != "" {
		t.Fatal("a request on its own sibling asks for a route")
	}
	if got := ResendAfter(js, stalled); got != resendMax {
		t.Fatalf("cold: resend after %v, want %v", got, resendMax)
	}
	for range 20 {
		AnswerTook(js, stalled, 2*time.Millisecond)
	}
	if got := ResendAfter(js, stalled); got != resendMin {
		t.Fatalf("fast sibling: resend after %v, want %v", got, resendMin)
	}

	resends := Resends(js)
	if !ResendRequest(ctx, js, shared.APIXKSEncrypt, msg, stalled) {
		t.Fatal("not resent")
	}
	if Resends(js) != resends+1 {
		t.Fatal("resend not counted")
	}
	var copyMsg *jetstream.RawStreamMsg
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if copyMsg, err = streams[2].GetLastMsgForSubject(ctx, shared.RequestSubjectOn(2, shared.APIXKSEncrypt)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no copy on the next sibling: %v", err)
		}
	}
	if copyMsg.Header.Get(shared.HeaderMsgID) != id || copyMsg.Header.Get(HeaderFailover) == "" {
		t.Fatalf("copy headers %v", copyMsg.Header)
	}
	if got := RouteOf(copyMsg.Subject, copyMsg.Header); got != 3 {
		t.Fatalf("copy routes work from %d, want 3 (sibling 2)", got)
	}
	if info, _ := streams[1].Info(ctx); info.State.Msgs != 1 {
		t.Fatalf("the stalled sibling holds %d messages, want the original only", info.State.Msgs)
	}

	// The stalled sibling is tried last now: a request that prefers it
	// detours, and says so.
	detour := requestMsg(idPreferring(t, 1) + "-x")
	for ownSibling(detour.Header.Get(shared.HeaderMsgID), 3) != 1 {
		detour = requestMsg(detour.Header.Get(shared.HeaderMsgID) + "x")
	}
	ack, err = PublishRequest(ctx, js, shared.APIXKSEncrypt, detour, PublishTry)
	if err != nil || ack.Stream == stalled {
		t.Fatalf("detour: %+v %v", ack, err)
	}
	if detour.Header.Get(HeaderRoute) == "" {
		t.Fatal("a detour does not ask for a route")
	}
	own := requestMsg(idPreferring(t, 2))
	if _, err := PublishRequest(ctx, js, shared.APIXKSEncrypt, own, PublishTry); err != nil || own.Header.Get(HeaderRoute) != "" {
		t.Fatalf("own sibling: %v, route %q", err, own.Header.Get(HeaderRoute))
	}
	if got := RouteOf(shared.RequestSubjectOn(2, shared.APIXKSEncrypt), own.Header); got != 0 {
		t.Fatalf("no route asked, got %d", got)
	}

	// Work of a routed request starts on the route's sibling.
	work := requestMsg(idPreferring(t, 0))
	ack, err = PublishWorkFrom(ctx, js, "p", shared.APIXKSEncrypt, work, PublishTry, 3)
	if err != nil || ack.Stream != shared.SiblingStream(shared.WorkStream("p"), 2) {
		t.Fatalf("routed work: %+v %v", ack, err)
	}

	// Resends are rationed with hedges: none without a token.
	st := stateOf(js)
	st.mu.Lock()
	st.credit = 0
	st.mu.Unlock()
	if ResendRequest(ctx, js, shared.APIXKSEncrypt, requestMsg(idPreferring(t, 0)), shared.SiblingStream(shared.StreamRequests, 0)) {
		t.Fatal("resent without a token")
	}
	// Nor with no time left.
	st.mu.Lock()
	st.credit = hedgeBurst * hedgeCost
	st.mu.Unlock()
	short, stop := context.WithTimeout(ctx, resendRoom)
	defer stop()
	if ResendRequest(short, js, shared.APIXKSEncrypt, requestMsg(idPreferring(t, 0)), shared.SiblingStream(shared.StreamRequests, 0)) {
		t.Fatal("resent with too little of the deadline left")
	}
}

// threeRequestSiblings declares three request-stream siblings on js.
func threeRequestSiblings(ctx context.Context, t *testing.T, js jetstream.JetStream) (Topology, []jetstream.Stream) {
	t.Helper()
	topo := DefaultTopology()
	topo.Siblings = 3
	streams, err := EnsureRequestStreams(ctx, js, topo)
	if err != nil {
		t.Fatal(err)
	}
	return topo, streams
}

// One sibling: nowhere to resend.
func TestNoResendWithOneSibling(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx := context.Background()
	if _, err := EnsureRequestStreams(ctx, js, DefaultTopology()); err != nil {
		t.Fatal(err)
	}
	if got := ResendAfter(js, shared.StreamRequests); got != 0 {
		t.Fatalf("resend after %v with one stream", got)
	}
	if ResendRequest(ctx, js, shared.APIXKSEncrypt, requestMsg("r"), shared.StreamRequests) {
		t.Fatal("resent with one stream")
	}
}

// When every sibling is marked (resends marked the live ones while a node
// was lost), the one silent since its last ack still comes last; and a
// sibling that acks again settles once, not on every ack.
func TestDeadSiblingLastWhenAllAreMarked(t *testing.T) {
	st := &siblingState{n: 3, until: map[string]time.Time{}, acks: map[string]*ackLatency{}}
	name := func(i int) string { return shared.SiblingStream(shared.StreamRequests, i) }
	for i := range 3 {
		st.observe(name(i), time.Millisecond, nil) // every sibling acked once
	}
	now := time.Now()
	st.mark(name(0), true, now) // resends
	st.mark(name(2), true, now)
	st.markSilent(name(1), now) // its node is gone
	if got := st.orderFrom(1, 3, name, now); got[0] != 2 || got[1] != 0 || got[2] != 1 {
		t.Fatalf("order %v, want [2 0 1]: the dead sibling last", got)
	}
	// A marked sibling that keeps acking is not held longer by its acks.
	until := st.until[name(0)]
	st.observe(name(0), time.Millisecond, nil)
	if !st.until[name(0)].Equal(until) {
		t.Fatal("an ack extended a sibling that never went silent")
	}
	// The dead one acks again: it settles (tried last a while), once.
	st.observe(name(1), time.Millisecond, nil)
	settled := st.until[name(1)]
	if !settled.After(now.Add(siblingSettle - time.Second)) {
		t.Fatalf("recovered sibling not settling: %v", settled)
	}
	st.observe(name(1), time.Millisecond, nil)
	if !st.until[name(1)].Equal(settled) {
		t.Fatal("settling extended by a later ack")
	}
	st.mu.Lock()
	dead := st.isDeadLocked(name(1), time.Now())
	st.mu.Unlock()
	if dead {
		t.Fatal("a sibling that acked again is still dead")
	}
}
